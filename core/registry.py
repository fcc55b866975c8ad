"""The models a user can pick. A new kind of model plugs in with `register`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .checkpoints import list_trained_models, load_trained_model
from .device import available_memory_gb, describe, resolve_device
from .errors import InvalidParameterError
from .model import GPTModel
from .rng import seeded_untrained_model
from .weights import HF_REPOS, MEMORY, SIZE_NAMES, load_pretrained_gpt2, memory_warning


@dataclass(frozen=True)
class ModelSpec:
    key: str  # stable id, used in URLs and cache keys
    label: str  # what the model picker shows
    description: str
    load: Callable[[int], GPTModel]  # seed -> frozen model in eval mode
    seeded: bool = False  # the seed changes the weights (untrained models only)
    needs_download: bool = False


_REGISTRY: dict[str, ModelSpec] = {}
_PROVIDERS: list[Callable[[], list[ModelSpec]]] = []


def register(spec: ModelSpec) -> None:
    _REGISTRY[spec.key] = spec


def register_provider(provider: Callable[[], list[ModelSpec]]) -> None:
    """A provider lists models found at call time (e.g. weights trained and saved earlier)."""
    _PROVIDERS.append(provider)


def available_models() -> dict[str, ModelSpec]:
    models = dict(_REGISTRY)
    for provider in _PROVIDERS:
        for spec in provider():
            models.setdefault(spec.key, spec)
    return models


def get_spec(key: str) -> ModelSpec:
    models = available_models()
    if key not in models:
        raise InvalidParameterError(f"Unknown model {key!r}; choose one of {', '.join(models)}.")
    return models[key]


def load_model(key: str, seed: int = 123, device: str | torch.device | None = None) -> GPTModel:
    """The model `key` (built or read on the CPU, where the seed gives the book's weights), moved
    to `device` (see core.device.resolve_device; None means $LOSSLENS_DEVICE, else auto)."""
    spec = get_spec(key)
    target = resolve_device(device) if not isinstance(device, torch.device) else device
    model = spec.load(seed)
    if target.type != "cpu":
        need = sum(p.numel() * p.element_size() for p in model.parameters()) / 1024**3
        free = available_memory_gb(target)
        if free is not None and free < need:
            raise InvalidParameterError(
                f"{spec.label} needs {need:.1f} GB on {describe(target)}, which has {free:.1f} GB free. "
                "Choose the CPU or a smaller model."
            )
    return model.to(target)  # on the CPU, where it was built: as it is, weights still packed


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
    """OpenAI's GPT-2 releases, downloaded from the Hugging Face Hub on first use (core.weights)."""
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


def _trained_models() -> list[ModelSpec]:
    """Models trained with `python -m core train` or in the app, saved in the cache."""
    specs = []
    for path, meta in list_trained_models():
        s, cfg = meta["state"], meta["config"]
        val = f", val loss {s['val_losses'][-1]:.3f}" if s.get("val_losses") else ""
        progress = (
            f"stopped after {s['global_step'] + 1} steps" if s.get("stopped") else f"{s['epoch']} epochs"
        )
        specs.append(
            ModelSpec(
                key=f"trained-{meta['name']}",
                label=f"Trained: {meta['name']} ({meta['preset']} preset, {progress}{val})",
                description="Trained on a corpus by train_model_simple (section 5.2): "
                f"{cfg['n_layers']} layers, "
                f"width {cfg['emb_dim']}, context {cfg['context_length']}, {s['global_step'] + 1} steps, "
                f"{s['tokens_seen']:,} tokens seen; saved {meta.get('saved_at', '')}.",
                load=lambda seed, path=path: load_trained_model(path),
            )
        )
    return specs


_register_pretrained()
register_provider(_trained_models)
