"""Saved training runs: safetensors only, in <cache>/models.

<name>.safetensors holds the weights and a JSON description (config, preset, losses);
<name>.resume.safetensors holds the optimizer state and the generator states, so a stopped
run resumes exactly.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import InvalidParameterError, WeightsError
from .model import GPTModel, freeze
from .paths import cache_dir
from .train import TrainState
from .weights import read_safetensors

FORMAT = "losslens-trained-v1"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def models_dir() -> Path:
    path = cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith(".resume"):
        raise InvalidParameterError(
            f"Model name {name!r}: use 1-64 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit."
        )
    return name


def model_path(name: str) -> Path:
    return models_dir() / f"{check_name(name)}.safetensors"


def resume_path(name: str) -> Path:
    return models_dir() / f"{check_name(name)}.resume.safetensors"


def corpus_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _atomic_save(tensors: dict, path: Path, metadata: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(tmp), metadata={"losslens": json.dumps(metadata)})
    tmp.replace(path)  # a reader never sees a half-written file


def save_checkpoint(
    name: str, model, optimizer, state: TrainState, preset, corpus_sha256: str, elapsed_s: float = 0.0
) -> Path:
    """Weights + description to <name>.safetensors; optimizer and generators to <name>.resume.safetensors."""
    meta = {
        "format": FORMAT,
        "name": name,
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
    path = model_path(name)
    _atomic_save(weights, path, meta)

    opt = optimizer.state_dict()
    tensors = {"rng.now": state.rng_now if state.rng_now is not None else torch.get_rng_state()}
    if state.rng_epoch_start is not None:
        tensors["rng.epoch_start"] = state.rng_epoch_start
    for idx, slots in opt["state"].items():
        for key, value in slots.items():
            tensors[f"optim.{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    _atomic_save(tensors, resume_path(name), {"param_groups": opt["param_groups"], "weights": path.name})
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


def load_resume_state(name: str, model) -> tuple[torch.optim.Optimizer, TrainState, dict]:
    """Optimizer (AdamW with its moments, on the model's device), TrainState and description."""
    meta = read_metadata(model_path(name))
    path = resume_path(name)
    if not path.is_file():
        raise WeightsError(f"No resume data for {name!r} ({path.name} is missing).")
    with safe_open(str(path), framework="pt") as f:
        extra = json.loads(f.metadata()["losslens"])
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


def list_trained_models() -> list[tuple[Path, dict]]:
    """(path, description) of every readable trained model in the cache, newest first."""
    found = []
    for path in models_dir().glob("*.safetensors"):
        if path.name.endswith(".resume.safetensors"):
            continue
        try:
            found.append((path, read_metadata(path)))
        except WeightsError:
            continue  # a foreign or damaged file: not offered
    found.sort(key=lambda pm: pm[0].stat().st_mtime, reverse=True)
    return found


def saved_run(name: str) -> dict | None:
    """The description of the model saved as `name`, or None."""
    path = model_path(name)
    if not path.is_file():
        return None
    try:
        return read_metadata(path)
    except WeightsError:
        return None


def is_resumable(name: str) -> bool:
    """A run saved as `name` that stopped before its last epoch and kept its resume data."""
    meta = saved_run(name)
    return bool(meta and meta["state"].get("stopped") and resume_path(name).is_file())


def check_new_name(name: str) -> str:
    """A name a fresh run may save under: valid, and not taken by a saved model."""
    if model_path(name).is_file():
        raise InvalidParameterError(f"A model named {name!r} is already saved; choose another name.")
    return name
