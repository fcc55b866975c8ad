"""Where LossLens keeps downloads and trained weights: a per-user cache folder."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

CACHE_ENV = "LOSSLENS_CACHE_DIR"


def cache_dir() -> Path:
    """`$LOSSLENS_CACHE_DIR`, else the platform's user cache folder for LossLens."""
    path = Path(os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("losslens", appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path
