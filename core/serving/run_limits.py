"""What one training run may take on this server: steps, wall time, and how long it outlives its
visitor's closed page. Generous caps on a shared server, none on a local one; each has its
environment variable."""

from __future__ import annotations

import os
from dataclasses import dataclass

from core.errors import InvalidParameterError
from core.runtime.deployment import shared_server

MAX_STEPS_ENV = "LOSSLENS_MAX_STEPS"  # steps one run may take before it stops and saves
MAX_TRAIN_ENV = "LOSSLENS_MAX_TRAIN_S"  # seconds one run may take before it stops and saves
GRACE_ENV = "LOSSLENS_ORPHAN_GRACE_S"  # how long a run outlives its visitor's closed page
# A shared server's defaults: a book run (90 steps, 10 epochs) fits; 100 epochs of it does not.
SHARED_MAX_STEPS, SHARED_MAX_TRAIN_S, ORPHAN_GRACE_S = 200, 30 * 60.0, 90.0


def _env_number(name: str, default: float | None, kind=float) -> float | None:
    """A positive number from the environment; 0 or "none" means no cap."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("0", "none", "off"):
        return None
    try:
        value = kind(raw)
    except ValueError:
        value = -1
    if value <= 0:
        raise InvalidParameterError(f"{name}={raw!r}: write a positive number, or 0 for no limit.")
    return value


@dataclass(frozen=True)
class RunLimits:
    """What one run may take on this server; None is no limit.

    `max_steps` and `max_wall_s` stop a run (saved, resumable) so that the one training slot
    goes round; `orphan_grace_s` stops a run whose visitor's page has been gone that long."""

    max_steps: int | None = None
    max_wall_s: float | None = None
    orphan_grace_s: float | None = ORPHAN_GRACE_S

    @classmethod
    def from_env(cls, shared: bool | None = None) -> RunLimits:
        """The caps for this server: generous on a shared one, none on a local one, each
        overridden by its environment variable."""
        shared = shared_server() if shared is None else shared
        steps = _env_number(MAX_STEPS_ENV, SHARED_MAX_STEPS if shared else None, int)
        wall = _env_number(MAX_TRAIN_ENV, SHARED_MAX_TRAIN_S if shared else None)
        return cls(steps, wall, _env_number(GRACE_ENV, ORPHAN_GRACE_S))
