"""The models a user can pick. A new kind of model plugs in with `register`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .model import GPTModel, build_untrained_model


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
        from .errors import InvalidParameterError

        raise InvalidParameterError(f"Unknown model {key!r}; choose one of {', '.join(models)}.")
    return models[key]


def load_model(key: str, seed: int = 123) -> GPTModel:
    return get_spec(key).load(seed)


register(
    ModelSpec(
        key="untrained-124m",
        label="Untrained GPT-2 124M (book, section 5.1)",
        description="GPT_CONFIG_124M with random weights from torch.manual_seed(seed); "
        "the book's numbers come from seed 123.",
        load=lambda seed: build_untrained_model(seed),
        seeded=True,
    )
)
