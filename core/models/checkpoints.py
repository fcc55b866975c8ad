"""Saved training runs: safetensors only, in <cache>/models.

<name>.safetensors holds the weights and a JSON description (config, preset, losses);
<name>.resume.safetensors holds the optimizer state and the generator states, so a stopped
run resumes exactly. Both carry one `unit` id: a resume file only resumes the weights it was
written with, so a save cut short never offers a run that cannot resume.

On a shared server each visitor's models live in <cache>/models/<owner>/ (owner None is the
flat folder of a local server and the CLI). Every save keeps all saved models, across owners,
under a quota of size and count (LOSSLENS_MODELS_MAX_MB,
LOSSLENS_MODELS_MAX_COUNT), oldest unpinned first out, and checks the
disk's free space first.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from core.book.model import GPTModel, freeze
from core.book.train import TrainState
from core.errors import InvalidParameterError, StorageError, WeightsError
from core.models.weights import read_safetensors
from core.runtime.deployment import shared_server
from core.runtime.paths import cache_dir

FORMAT = "losslens-trained-v1"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# An owner key names a folder: no dot, so never "..", never a model file's name.
_OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
WEIGHTS_SUFFIX, RESUME_SUFFIX, PIN_SUFFIX = ".safetensors", ".resume.safetensors", ".pinned"
STALE_TMP_S = 3600.0  # a temporary file this old is left from a killed save: removed by the next one


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith(".resume"):
        raise InvalidParameterError(
            f"Model name {name!r}: use 1-64 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit."
        )
    return name


def check_owner(owner: str | None) -> str | None:
    if owner is not None and (not isinstance(owner, str) or not _OWNER.match(owner)):
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


def corpus_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- the quota and the disk -----------------------------------------------------------------

MAX_MB_ENV, MAX_COUNT_ENV, RESERVE_MB_ENV, SHARE_ENV = (
    "LOSSLENS_MODELS_MAX_MB",
    "LOSSLENS_MODELS_MAX_COUNT",
    "LOSSLENS_DISK_RESERVE_MB",
    "LOSSLENS_MODELS_OWNER_SHARE",
)
# Community Cloud's disk is small and ephemeral: a shared server keeps 2 GB of models (a dozen
# quick runs, or one stopped book run); a local server keeps what a person is likely to want.
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
            if sub.is_dir() and _OWNER.match(sub.name):
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
                    if _NAME.match(stem) and not stem.endswith(".resume"):
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


def _training_now() -> set[tuple[str | None, str]]:
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
        raise _disk_words(e, f"the model {name!r}") from e
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            mark.unlink()
            if owner is not None:
                mark.parent.rmdir()  # only if empty: a run that saved nothing leaves no folder


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
    busy = _training_now()
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


def delete_model(name: str, *, owner: str | None = None) -> bool:
    """Removes `owner`'s model `name` (weights, resume and pin files); False if none was saved.
    Refused while it is being trained."""
    if (owner, check_name(name)) in _training_now():
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


# --- saving: weights and resume state as one unit -----------------------------------------------


def _disk_words(e: BaseException, what: str) -> StorageError:
    text = str(e)
    code = getattr(e, "errno", None)
    if code == errno.ENOSPC or "os error 28" in text or "No space left" in text:
        return StorageError(f"The disk is full: {what} could not be saved, and nothing was half-saved.")
    if code in (errno.EROFS, errno.EACCES, errno.EPERM) or "os error 30" in text or "os error 13" in text:
        return StorageError(f"The cache folder cannot be written: {what} was not saved ({e}).")
    return StorageError(f"{what} could not be saved: {e}")


def _write_tmp(tensors: dict, path: Path, metadata: dict) -> Path:
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")  # never a name the picker lists
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    try:
        save_file(tensors, str(tmp), metadata={"losslens": json.dumps(metadata)})
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def save_checkpoint(
    name: str,
    model,
    optimizer,
    state: TrainState,
    preset,
    corpus_sha256: str,
    elapsed_s: float = 0.0,
    *,
    owner: str | None = None,
) -> Path:
    """Weights + description to <name>.safetensors; a stopped run's optimizer and generators to
    <name>.resume.safetensors (a finished run keeps none). Both are written to temporary files
    first and renamed only when both are whole; the quota and the free space are checked first."""
    check_name(name)
    unit = uuid.uuid4().hex
    meta = {
        "format": FORMAT,
        "name": name,
        "unit": unit,
        "config": model.cfg,
        "preset": preset.name,
        "hyperparameters": {k: v for k, v in asdict(preset).items() if k not in ("cfg", "description")},
        "num_epochs": preset.num_epochs,
        "corpus_sha256": corpus_sha256,
        "elapsed_s": elapsed_s,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "state": state.to_json(),
    }
    weights = dict(model.state_dict())
    if model.out_head.weight is model.tok_emb.weight:  # tied (from GPT-2): store once
        weights.pop("out_head.weight")
        meta["tied_out_head"] = True
    resume = None
    if state.stopped:  # only a stopped run can resume: a finished one needs no resume file
        opt = optimizer.state_dict()
        resume = {"rng.now": state.rng_now if state.rng_now is not None else torch.get_rng_state()}
        if state.rng_epoch_start is not None:
            resume["rng.epoch_start"] = state.rng_epoch_start
        for idx, slots in opt["state"].items():
            for key, value in slots.items():
                resume[f"optim.{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    need = sum(t.numel() * t.element_size() for d in (weights, resume or {}) for t in d.values())
    need += HEADER_BYTES

    victims = plan_room(need, name, owner=owner)
    check_disk(need - sum(v.bytes for v in victims), owner=owner)  # before anything is removed
    for v in victims:  # oldest unpinned first out, across owners
        delete_model(v.name, owner=v.owner)
    path, rpath = model_path(name, owner=owner), resume_path(name, owner=owner)
    tmps = []
    try:
        models_dir(owner, create=True)
        tmps.append(_write_tmp(weights, path, meta))
        if resume is not None:
            groups = opt["param_groups"]
            tmps.append(
                _write_tmp(resume, rpath, {"param_groups": groups, "weights": path.name, "unit": unit})
            )
        # Both whole: the resume file first, then the weights the picker lists. A crash between the
        # two renames leaves weights whose unit no resume file matches: listed, never resumable.
        if resume is not None:
            tmps[1].replace(rpath)
        else:
            rpath.unlink(missing_ok=True)
        tmps[0].replace(path)
    except (OSError, SafetensorError) as e:
        raise _disk_words(e, f"the model {name!r}") from e
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
    return path


def read_metadata(path: str | Path) -> dict:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("losslens", "null"))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{Path(path).name} is not a readable safetensors file: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise WeightsError(f"{Path(path).name} is not a model trained by LossLens.")
    return meta


def load_trained_model(path: str | Path, trainable: bool = False) -> GPTModel:
    """A saved model: frozen for inference, or (trainable=True) in train mode with gradients."""
    meta = read_metadata(path)
    weights = read_safetensors(path)
    with torch.device("meta"):
        model = GPTModel(meta["config"])
    tied = meta.get("tied_out_head", False)
    if tied:
        weights["out_head.weight"] = weights["tok_emb.weight"]
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as e:
        raise WeightsError(f"{Path(path).name} does not fit its own config: {e}") from e
    if tied:
        model.out_head.weight = model.tok_emb.weight
    del weights  # the model is now the weights' only holder: freeze() may pack them in place
    if trainable:
        model.train()
        model.requires_grad_(True)
        return model
    return freeze(model)


def _resume_meta(path: Path) -> dict | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {}).get("losslens", "null"))
    except (SafetensorError, OSError, ValueError):
        return None


def load_resume_state(
    name: str, model, *, owner: str | None = None
) -> tuple[torch.optim.Optimizer, TrainState, dict]:
    """Optimizer (AdamW with its moments, on the model's device), TrainState and description."""
    wpath = model_path(name, owner=owner)
    if not wpath.is_file():
        raise WeightsError(f"No model is saved as {name!r}, so there is no run to resume; train it first.")
    meta = read_metadata(wpath)
    path = resume_path(name, owner=owner)
    if not meta["state"].get("stopped"):
        raise WeightsError(f"{name!r} finished all its epochs; there is nothing left to resume.")
    extra = _resume_meta(path) if path.is_file() else None
    if extra is None or extra.get("unit") != meta.get("unit"):
        raise WeightsError(f"No resume data for {name!r}: its save was cut short or removed; train it anew.")
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    groups = extra["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    opt_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, slot = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[slot] = value
    lr, decay = groups[0]["lr"], groups[0]["weight_decay"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=decay)
    optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    state = TrainState(
        **meta["state"], rng_epoch_start=tensors.get("rng.epoch_start"), rng_now=tensors["rng.now"]
    )
    return optimizer, state, meta


def list_trained_models(*, owner: str | None = None) -> list[tuple[Path, dict]]:
    """(path, description) of every readable trained model of `owner` (None: the flat folder),
    newest first. A missing or unreadable folder lists nothing: the lessons never depend on it."""
    found = []
    try:
        paths = list(models_dir(owner).glob(f"*{WEIGHTS_SUFFIX}"))
    except OSError:
        return []
    for path in paths:
        if path.name.endswith(RESUME_SUFFIX):
            continue
        try:
            found.append((path, read_metadata(path), path.stat().st_mtime))
        except (WeightsError, OSError):
            continue  # a foreign or damaged file, or one deleted meanwhile: not offered
    found.sort(key=lambda pmt: pmt[2], reverse=True)
    return [(p, m) for p, m, _ in found]


def saved_run(name: str, *, owner: str | None = None) -> dict | None:
    """The description of `owner`'s model saved as `name`, or None."""
    path = model_path(name, owner=owner)
    try:
        if not path.is_file():
            return None
        return read_metadata(path)
    except (WeightsError, OSError):
        return None


def is_resumable(name: str, *, owner: str | None = None) -> bool:
    """A run saved as `name` that stopped before its last epoch, with the resume data written
    with those very weights."""
    meta = saved_run(name, owner=owner)
    if not (meta and meta["state"].get("stopped")):
        return False
    path = resume_path(name, owner=owner)
    extra = _resume_meta(path) if path.is_file() else None
    return bool(extra) and extra.get("unit") == meta.get("unit")


def check_new_name(name: str, *, owner: str | None = None) -> str:
    """A name a fresh run may save under: valid, and not taken by one of `owner`'s models."""
    if model_path(name, owner=owner).is_file():
        raise InvalidParameterError(f"A model named {name!r} is already saved; choose another name.")
    return name
