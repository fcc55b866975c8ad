"""How much may be saved: every save keeps all saved models, across owners, under a quota of
size and count (LOSSLENS_MODELS_MAX_MB, LOSSLENS_MODELS_MAX_COUNT), oldest unpinned first out,
one visitor's share of it on a shared server, and the disk's free space checked first.
"""

from __future__ import annotations

import os
import shutil
import uuid

import torch

from core.book.model import GPTModel
from core.errors import InvalidParameterError, StorageError
from core.models.model_files import SavedUnit, models_root, saved_units, training_now
from core.runtime.deployment import shared_server
from core.runtime.paths import cache_dir

MAX_MB_ENV, MAX_COUNT_ENV, RESERVE_MB_ENV, SHARE_ENV = (
    "LOSSLENS_MODELS_MAX_MB",
    "LOSSLENS_MODELS_MAX_COUNT",
    "LOSSLENS_DISK_RESERVE_MB",
    "LOSSLENS_MODELS_OWNER_SHARE",
)
# (MB, models): a shared server's disk is small and may be wiped on a restart; a local server
# keeps what a person is likely to want.
SHARED_DEFAULTS = (2000, 50)
LOCAL_DEFAULTS = (50_000, 1000)
MB = 1_000_000  # sizes are decimal megabytes, as `df -H` and a file manager show them
HEADER_BYTES = 256 * 1024  # a save's JSON descriptions (losses, samples) beside its tensors
OWNER_SHARE = 0.25  # of the quota, per visitor on a shared server
RESERVE_MB = 64  # left free on the disk after a save, for the logs and the server's own files


def _env_number(env: str, default: float) -> float:
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidParameterError(f"{env}={raw!r} is not a number.") from None
    if not value >= 0:
        raise InvalidParameterError(f"{env}={raw!r} must be 0 or more.")
    return value


def quota() -> tuple[int, int]:
    """(bytes, count) all saved models may take together: the settings, else the defaults of
    this kind of server."""
    mb, count = SHARED_DEFAULTS if shared_server() else LOCAL_DEFAULTS
    return int(_env_number(MAX_MB_ENV, mb) * MB), int(_env_number(MAX_COUNT_ENV, count))


def _reserve_bytes() -> int:
    return int(_env_number(RESERVE_MB_ENV, RESERVE_MB) * MB)


def _mb(n: float) -> str:
    return f"{n / MB:,.0f} MB" if n >= MB else f"{n / MB:.1f} MB"


def parameter_count(cfg: dict) -> int:
    """A configuration's parameter count, from a model on the meta device (no memory)."""
    with torch.device("meta"):
        return sum(p.numel() for p in GPTModel(cfg).parameters())


def expected_save_bytes(cfg: dict, resumable: bool = True) -> int:
    """What a save of a fresh model of `cfg` writes: float32 weights, and for a stopped run
    AdamW's two moments per weight (the resume file), plus a little for the descriptions."""
    n = parameter_count(cfg)
    return n * 4 * (3 if resumable else 1) + HEADER_BYTES


def owner_share() -> tuple[int, int]:
    """(bytes, count) one visitor's models may hold on a shared server: a quarter of the quota
    (LOSSLENS_MODELS_OWNER_SHARE), so one visitor's saves never push out everybody else's."""
    max_bytes, max_count = quota()
    share = _env_number(SHARE_ENV, OWNER_SHARE)
    if share > 1:
        raise InvalidParameterError(f"{SHARE_ENV}={share:g} must be a fraction of the quota, from 0 to 1.")
    return int(max_bytes * share), max(1, int(max_count * share))


def _evict(units: list[SavedUnit], nbytes: int, limits: tuple[int, int], busy: set, words: tuple[str, str]):
    """The oldest unpinned, idle units of `units` to remove so that a save of `nbytes` keeps them
    within (bytes, count); StorageError, in `words` (whose limit, what it keeps), when it cannot."""
    whose, keeps = words
    max_bytes, max_count = limits
    if nbytes > max_bytes:
        raise StorageError(
            f"This model needs about {_mb(nbytes)} on disk, more than the {_mb(max_bytes)} {keeps}. "
            "Choose a smaller preset."
        )
    used, victims = sum(u.bytes for u in units), []
    for unit in units:
        if used + nbytes <= max_bytes and len(units) - len(victims) + 1 <= max_count:
            break
        if unit.pinned or (unit.owner, unit.name) in busy:
            continue
        victims.append(unit)
        used -= unit.bytes
    if used + nbytes > max_bytes or len(units) - len(victims) + 1 > max_count:
        raise StorageError(
            f"The saved models are at {whose} ({_mb(max_bytes)}, {max_count} models) and the rest are "
            "pinned or training: delete one of yours to save another."
        )
    return victims


def plan_room(nbytes: int, name: str, *, owner: str | None = None) -> list[SavedUnit]:
    """The saved models a save of `nbytes` as (owner, name) must evict to stay in the quota,
    oldest unpinned first and never one being trained; StorageError when no eviction makes room.
    A visitor on a shared server loses their own oldest models before anybody else's once they
    hold their share."""
    units = [u for u in saved_units() if (u.owner, u.name) != (owner, name)]  # it replaces itself
    busy = training_now()
    own = []
    if owner is not None:
        keeps = f"one visitor may keep on this server ({SHARE_ENV} of {MAX_MB_ENV})"
        words = ("your share of this server", keeps)
        own = _evict([u for u in units if u.owner == owner], nbytes, owner_share(), busy, words)
    rest = [u for u in units if u not in own]
    words = ("this server's quota", f"this server keeps for all saved models ({MAX_MB_ENV})")
    return own + _evict(rest, nbytes, quota(), busy, words)


def check_disk(nbytes: int, *, owner: str | None = None) -> None:
    """StorageError unless the models' folder can be written and its disk has `nbytes` free
    beyond the reserve."""
    problem = save_problem(owner=owner)
    if problem:
        raise StorageError(problem)
    free = shutil.disk_usage(models_root()).free
    if free - nbytes < _reserve_bytes():
        raise StorageError(
            f"The disk is nearly full: saving this model needs about {_mb(nbytes)}, beside the "
            f"{_mb(_reserve_bytes())} LossLens leaves free for the server ({RESERVE_MB_ENV}), and the disk "
            f"has {_mb(free)} free. Nothing was saved; delete saved models or free space on the server."
        )


def check_room(cfg: dict, name: str, *, owner: str | None = None) -> None:
    """Before a run starts: its save (a stopped run's, the largest) can fit in the quota and on
    the disk, so no run trains for an hour to fail at its save."""
    need = expected_save_bytes(cfg)
    victims = plan_room(need, name, owner=owner)
    check_disk(need - sum(v.bytes for v in victims), owner=owner)


def save_problem(*, owner: str | None = None) -> str | None:
    """Why models cannot be saved here (the cache folder is unwritable or missing), or None.
    It tries what a save does: create the models' folder, write and remove a file. (An owner's
    own folder is made only by a save, so visits leave no empty folders behind.)"""
    folder = models_root()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{uuid.uuid4().hex}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        return (
            f"Saving is off: the cache folder {cache_dir()} cannot be written "
            f"({e.strerror or e}). Set LOSSLENS_CACHE_DIR to a writable folder to train and save models."
        )
    return None
