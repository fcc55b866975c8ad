"""The models a user can pick. A new kind of model plugs in with `register`.

Trained models belong to an owner (core.models.checkpoints): every call that lists or loads them says
whose models it may see. Owner None (a local server, the CLI) keeps the flat folder and the keys
`trained-NAME`; an owner's keys are `trained-NAME@TAG`, TAG a digest of the owner key, so caches
keyed on the model key never mix two visitors' models and a key copied into a URL reaches only
its owner's model, and only from its owner's session."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from core.book.model import GPTModel
from core.errors import InvalidParameterError, WeightsError
from core.models.checkpoints import list_trained_models, load_trained_model, read_metadata
from core.models.hub import HF_REPOS, MEMORY, SIZE_NAMES, load_pretrained_gpt2, memory_warning
from core.models.model_files import check_name, check_owner, model_path, models_root
from core.runtime.device import resolve_device, to_device_with_room
from core.runtime.rng import seeded_untrained_model


@dataclass(frozen=True)
class ModelSpec:
    key: str  # stable id, used in URLs and cache keys
    label: str  # what the model picker shows
    description: str
    load: Callable[[int], GPTModel]  # seed -> frozen model in eval mode
    seeded: bool = False  # the seed changes the weights (untrained models only)
    needs_download: bool = False


_REGISTRY: dict[str, ModelSpec] = {}
_PROVIDERS: list[Callable[[str | None], list[ModelSpec]]] = []


def register(spec: ModelSpec) -> None:
    _REGISTRY[spec.key] = spec


def register_provider(provider: Callable[[str | None], list[ModelSpec]]) -> None:
    """A provider lists an owner's models found at call time (e.g. weights trained and saved
    earlier); it is called with the owner key (None: a local server's)."""
    _PROVIDERS.append(provider)


def available_models(owner: str | None = None) -> dict[str, ModelSpec]:
    """The registered models and `owner`'s trained ones (None: the flat folder's)."""
    models = dict(_REGISTRY)
    for provider in _PROVIDERS:
        for spec in provider(owner):
            models.setdefault(spec.key, spec)
    return models


def get_spec(key: str, owner: str | None = None) -> ModelSpec:
    """The model `key`: a registered one, or one of `owner`'s trained models (never another's)."""
    if isinstance(key, str) and key in _REGISTRY:
        return _REGISTRY[key]
    if _owns(key, owner):  # one file read, not the whole folder
        path = model_path(split_trained_key(key)[0], owner=owner)
        try:
            return _trained_spec(path, read_metadata(path), owner)
        except (WeightsError, OSError):
            pass  # damaged or removed since: unknown, as below
    models = available_models(owner)
    if isinstance(key, str) and key in models and split_trained_key(key) is None:  # another provider's
        return models[key]
    shown = str(key)[:80]
    raise InvalidParameterError(f"Unknown model {shown!r}; choose one of {', '.join(models)}.")


def load_model(
    key: str, seed: int = 123, device: str | torch.device | None = None, owner: str | None = None
) -> GPTModel:
    """The model `key` (built or read on the CPU, where the seed gives the book's weights), moved
    to `device` (see core.runtime.device.resolve_device; None means $LOSSLENS_DEVICE, else auto); a
    trained model only from `owner`'s folder."""
    spec = get_spec(key, owner)
    target = resolve_device(device) if not isinstance(device, torch.device) else device
    return to_device_with_room(spec.load(seed), spec.label, target)


BOOK_MODEL, BOOK_SEED = "untrained-124m", 123  # section 5.1's model and seed: the app's default


def effective_seed(key: str, seed: int) -> int:
    """The seed that picks `key`'s weights: the user's for a seeded model, else 0 (one entry
    for every seed). Every cache of models or results keys on this."""
    spec = _REGISTRY.get(key)  # seeded models are registered, not provided: no scan of the disk
    return seed if spec is not None and spec.seeded else 0


register(
    ModelSpec(
        key=BOOK_MODEL,
        label="Untrained GPT-2 124M (book, section 5.1)",
        description="GPT_CONFIG_124M with random weights from torch.manual_seed(seed); "
        "the book's numbers come from seed 123.",
        load=seeded_untrained_model,
        seeded=True,
    )
)


def _register_pretrained() -> None:
    """OpenAI's GPT-2 releases, downloaded from the Hugging Face Hub on first use (core.models.hub)."""
    for size in HF_REPOS:
        warning = memory_warning(size)
        register(
            ModelSpec(
                key=f"gpt2-{size.lower()}",
                label=f"Pretrained {SIZE_NAMES[size]} (OpenAI weights)",
                description=f"OpenAI's GPT-2 weights ({HF_REPOS[size]}, {MEMORY[size][0]} download "
                "on first use), "
                "context 1024, qkv_bias True (section 5.5)." + (f" {warning}" if warning else ""),
                load=lambda seed, size=size: load_pretrained_gpt2(size),
                needs_download=True,
            )
        )


TRAINED_PREFIX = "trained-"


def owner_tag(owner: str) -> str:
    """The owner's part of a model key: a digest, so the owner key never appears in a URL."""
    return hashlib.sha256(check_owner(owner).encode()).hexdigest()[:12]


def trained_key(name: str, owner: str | None = None) -> str:
    """The model key of `owner`'s model saved as `name`."""
    return f"{TRAINED_PREFIX}{name}" if owner is None else f"{TRAINED_PREFIX}{name}@{owner_tag(owner)}"


def split_trained_key(key: str) -> tuple[str, str | None] | None:
    """(name, tag) of a trained model's key, or None for any other string (a path, a typo)."""
    if not isinstance(key, str) or not key.startswith(TRAINED_PREFIX):
        return None
    name, sep, tag = key[len(TRAINED_PREFIX) :].partition("@")
    try:
        check_name(name)
    except InvalidParameterError:
        return None
    if sep and (len(tag) != 12 or any(c not in "0123456789abcdef" for c in tag)):
        return None
    return name, (tag if sep else None)


def _owns(key: str, owner: str | None) -> bool:
    """`key` names a model saved in `owner`'s folder (a cheap check: no folder listing)."""
    parts = split_trained_key(key)
    if parts is None or parts[1] != (owner_tag(owner) if owner is not None else None):
        return False
    try:
        return model_path(parts[0], owner=owner).is_file()
    except OSError:
        return False


def owner_of_key(key: str) -> str | None:
    """The owner whose folder holds a trained model's key (for a loader that runs outside the
    visitor's session: the session checked the key with get_spec(key, owner) first)."""
    parts = split_trained_key(key)
    if parts is None or parts[1] is None:
        return None
    try:
        folders = [p.name for p in models_root().iterdir() if p.is_dir()]
    except OSError:
        return None
    for name in folders:
        try:
            if owner_tag(name) == parts[1]:
                return name
        except InvalidParameterError:
            continue
    return None


def _trained_spec(path, meta: dict, owner: str | None) -> ModelSpec:
    name = path.name.removesuffix(".safetensors")  # the file's name is the key: it is what was checked
    s, cfg = meta["state"], meta["config"]
    val = f", val loss {s['val_losses'][-1]:.3f}" if s.get("val_losses") else ""
    progress = f"stopped after {s['global_step'] + 1} steps" if s.get("stopped") else f"{s['epoch']} epochs"
    return ModelSpec(
        key=trained_key(name, owner),
        label=f"Trained: {name} ({meta['preset']} preset, {progress}{val})",
        description="Trained on a corpus by train_model_simple (section 5.2): "
        f"{cfg['n_layers']} layers, "
        f"width {cfg['emb_dim']}, context {cfg['context_length']}, {s['global_step'] + 1} steps, "
        f"{s['tokens_seen']:,} tokens seen; saved {meta.get('saved_at', '')}.",
        load=lambda seed, path=path: load_trained_model(path),
    )


def trained_models(owner: str | None = None) -> list[ModelSpec]:
    """`owner`'s models trained with `python -m core train` or in the app, newest first."""
    return [_trained_spec(path, meta, owner) for path, meta in list_trained_models(owner=owner)]


_register_pretrained()
register_provider(trained_models)
