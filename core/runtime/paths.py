"""Where LossLens keeps downloads and trained weights: a per-user cache folder."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

CACHE_ENV = "LOSSLENS_CACHE_DIR"


def cache_dir() -> Path:
    """`$LOSSLENS_CACHE_DIR`, else the platform's user cache folder for LossLens. Created if it
    can be; a folder that cannot (read-only, or under a file) is still returned: reading from it
    finds nothing, and each writer says why it cannot write, so the lessons never depend on it."""
    path = Path(os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("losslens", appauthor=False))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass
    return path
