"""Where saved models live: valid names and owner keys, each owner's folder under <cache>/models,
the files of one saved model counted as a unit, the runs being trained, delete and pin.

On a shared server each visitor's models live in <cache>/models/<owner>/ (owner None is the
flat folder of a local server and the CLI).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from core.errors import InvalidParameterError, StorageError
from core.runtime.paths import cache_dir

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# An owner key names a folder: no dot, so never "..", never a model file's name.
OWNER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
WEIGHTS_SUFFIX, RESUME_SUFFIX, PIN_SUFFIX = ".safetensors", ".resume.safetensors", ".pinned"
STALE_TMP_S = 3600.0  # a temporary file this old is left from a killed save: removed by the next one


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or name.endswith(".resume"):
        raise InvalidParameterError(
            f"Model name {name!r}: use 1-64 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit."
        )
    return name


def check_owner(owner: str | None) -> str | None:
    if owner is not None and (not isinstance(owner, str) or not OWNER_PATTERN.match(owner)):
        raise InvalidParameterError(f"Owner key {owner!r}: use 1-64 letters, digits, '-' or '_'.")
    return owner


def models_root() -> Path:
    """<cache>/models, not created: reading never writes."""
    return cache_dir() / "models"


def models_dir(owner: str | None = None, create: bool = False) -> Path:
    """The folder of `owner`'s models (None: the flat folder); created only for a save."""
    root = models_root()
    path = root / check_owner(owner) if owner is not None else root
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def model_path(name: str, *, owner: str | None = None) -> Path:
    return models_dir(owner) / f"{check_name(name)}{WEIGHTS_SUFFIX}"


def resume_path(name: str, *, owner: str | None = None) -> Path:
    return models_dir(owner) / f"{check_name(name)}{RESUME_SUFFIX}"


def pin_path(name: str, *, owner: str | None = None) -> Path:
    return models_dir(owner) / f"{check_name(name)}{PIN_SUFFIX}"


@dataclass(frozen=True)
class SavedUnit:
    """One saved model on disk: its weights, resume and pin files, counted together."""

    owner: str | None
    name: str
    bytes: int
    mtime: float
    pinned: bool

    def paths(self) -> list[Path]:
        return [
            model_path(self.name, owner=self.owner),
            resume_path(self.name, owner=self.owner),
            pin_path(self.name, owner=self.owner),
        ]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _folders() -> list[tuple[str | None, Path]]:
    root = models_root()
    found: list[tuple[str | None, Path]] = [(None, root)]
    try:
        for sub in root.iterdir():
            if sub.is_dir() and OWNER_PATTERN.match(sub.name):
                found.append((sub.name, sub))
    except OSError:  # no folder yet, or an unreadable one: nothing saved there
        pass
    return found


def saved_units() -> list[SavedUnit]:
    """Every saved model of every owner, oldest first (by its weights' time). A resume file
    without its weights is counted too: it holds disk until it is removed."""
    units = []
    for owner, folder in _folders():
        try:
            files = list(folder.iterdir())
        except OSError:
            continue
        names = set()
        for f in files:
            for suffix in (RESUME_SUFFIX, WEIGHTS_SUFFIX, PIN_SUFFIX):
                if f.name.endswith(suffix):
                    stem = f.name[: -len(suffix)]
                    if NAME_PATTERN.match(stem) and not stem.endswith(".resume"):
                        names.add(stem)
                    break
            else:
                with contextlib.suppress(OSError):  # gone meanwhile: nothing to do
                    if f.name.endswith(".tmp") and time.time() - f.stat().st_mtime > STALE_TMP_S:
                        f.unlink()  # left by a save that was killed
        for name in names:
            w, r = folder / f"{name}{WEIGHTS_SUFFIX}", folder / f"{name}{RESUME_SUFFIX}"
            mtime = max((_mtime(p) for p in (w, r)), default=0.0)
            units.append(
                SavedUnit(owner, name, _size(w) + _size(r), mtime, (folder / f"{name}{PIN_SUFFIX}").exists())
            )
    units.sort(key=lambda u: u.mtime)
    return units


def training_now() -> set[tuple[str | None, str]]:
    """(owner, name) of the runs under way in live processes (their `.training` marks)."""
    busy = set()
    for owner, folder in _folders():
        for mark in folder.glob("*.training"):
            try:
                pid = int(mark.read_text().strip() or 0)
                os.kill(pid, 0)
            except (OSError, ValueError):
                continue  # a mark left by a process that died: not training
            busy.add((owner, mark.name[: -len(".training")]))
    return busy


@contextlib.contextmanager
def training(name: str, *, owner: str | None = None):
    """Marks `name` as being trained by this process, so no other save's quota evicts it."""
    check_name(name)
    try:
        mark = models_dir(owner, create=True) / f"{name}.training"
        mark.write_text(str(os.getpid()))
    except OSError as e:
        raise disk_error(e, f"the model {name!r}") from e
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            mark.unlink()
            if owner is not None:
                mark.parent.rmdir()  # only if empty: a run that saved nothing leaves no folder


def delete_model(name: str, *, owner: str | None = None) -> bool:
    """Removes `owner`'s model `name` (weights, resume and pin files); False if none was saved.
    Refused while it is being trained."""
    if (owner, check_name(name)) in training_now():
        raise InvalidParameterError(f"{name!r} is being trained; stop the run before deleting it.")
    removed = False
    for path in SavedUnit(owner, name, 0, 0.0, False).paths():
        try:
            path.unlink()
            removed = True
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StorageError(f"{name!r} could not be deleted: {e.strerror or e}.") from e
    if owner is not None:
        with contextlib.suppress(OSError):
            models_dir(owner).rmdir()  # only if empty: a visitor's last model takes its folder along
    return removed


def pin_model(name: str, pinned: bool = True, *, owner: str | None = None) -> None:
    """A pinned model is never evicted by the quota (it still counts towards it)."""
    if not model_path(name, owner=owner).is_file():
        raise InvalidParameterError(f"No model is saved as {name!r}.")
    path = pin_path(name, owner=owner)
    if pinned:
        path.touch()
    else:
        path.unlink(missing_ok=True)


def disk_error(e: BaseException, what: str) -> StorageError:
    text = str(e)
    code = getattr(e, "errno", None)
    if code == errno.ENOSPC or "os error 28" in text or "No space left" in text:
        return StorageError(f"The disk is full: {what} could not be saved, and nothing was half-saved.")
    if code in (errno.EROFS, errno.EACCES, errno.EPERM) or "os error 30" in text or "os error 13" in text:
        return StorageError(f"The cache folder cannot be written: {what} was not saved ({e}).")
    return StorageError(f"{what} could not be saved: {e}")
