"""Saved training runs: safetensors only, in <cache>/models (core.models.model_files names the
files, core.models.storage makes room for them).

<name>.safetensors holds the weights and a JSON description (config, preset, losses);
<name>.resume.safetensors holds the optimizer state and the generator states, so a stopped
run resumes exactly. Both carry one `unit` id: a resume file only resumes the weights it was
written with, so a save cut short never offers a run that cannot resume.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from core.book.model import GPTModel
from core.errors import InvalidParameterError, WeightsError
from core.models.masks import with_masks, without_masks
from core.models.model_files import (
    RESUME_SUFFIX,
    WEIGHTS_SUFFIX,
    check_name,
    delete_model,
    disk_error,
    model_path,
    models_dir,
    resume_path,
)
from core.models.storage import HEADER_BYTES, check_disk, plan_room
from core.models.training import TrainState
from core.models.weights import read_safetensors

FORMAT = "losslens-trained-v1"


def corpus_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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
    weights = without_masks(model.state_dict())
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
        raise disk_error(e, f"the model {name!r}") from e
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
    with_masks(weights, meta["config"])
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as e:
        raise WeightsError(f"{Path(path).name} does not fit its own config: {e}") from e
    if tied:
        model.out_head.weight = model.tok_emb.weight
    del weights  # the model is now the weights' only holder: serving may pack them in place
    if trainable:
        model.train()
        model.requires_grad_(True)
        return model
    return model.eval().requires_grad_(False)


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
