"""OpenAI's GPT-2 releases on the Hugging Face Hub: their repos, download sizes and memory needs,
the file from a local path, the Hub's cache or a download, and the load into the book's GPTModel."""

from __future__ import annotations

import os
from pathlib import Path

import huggingface_hub

from core.book.model import GPT2_MODEL_CONFIGS, GPT2_SMALL_CONFIG, GPTModel
from core.errors import WeightsError
from core.models.weights import load_gpt2_weights, require_free_ram
from core.runtime.paths import cache_dir as default_cache

HF_REPOS = {
    "124M": "openai-community/gpt2",
    "355M": "openai-community/gpt2-medium",
    "774M": "openai-community/gpt2-large",
    "1558M": "openai-community/gpt2-xl",
}
SIZE_NAMES = {size: name for size, name in zip(HF_REPOS, GPT2_MODEL_CONFIGS, strict=True)}
# Download size of model.safetensors and the RAM one loaded model needs (float32 weights
# plus the activations of a short text), rounded up.
MEMORY = {
    "124M": ("0.55 GB", 0.9),
    "355M": ("1.5 GB", 2.0),
    "774M": ("3.2 GB", 3.8),
    "1558M": ("6.4 GB", 7.2),
}
FILENAME = "model.safetensors"


def weights_env(size: str) -> str:
    """Environment variable naming a local model.safetensors for `size`, used instead of the Hub."""
    return f"LOSSLENS_GPT2_{size}_SAFETENSORS"


def check_size(size: str) -> str:
    if size not in HF_REPOS:
        raise WeightsError(f"Unknown GPT-2 size {size!r}; choose one of {', '.join(HF_REPOS)}.")
    return size


def memory_warning(size: str) -> str | None:
    """A warning for the sizes that do not fit a small server, such as a free hosted app."""
    file_size, ram_gb = MEMORY[check_size(size)]
    if size == "124M":
        return None
    return (
        f"{SIZE_NAMES[size]} downloads {file_size} and needs about {ram_gb:.1f} GB of RAM once "
        "loaded; a small server (such as a free hosted app with ~2.7 GB) runs out of memory."
    )


def check_memory(size: str) -> None:
    require_free_ram(MEMORY[check_size(size)][1], SIZE_NAMES[size])


def _network_errors() -> tuple[type[BaseException], ...]:
    # huggingface_hub's own errors are OSError subclasses; its HTTP client's transport
    # errors (DNS, refused connection, timeout) may not be.
    errors: list[type[BaseException]] = [OSError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def download_gpt2_safetensors(
    size: str = "124M", cache_dir: str | Path | None = None, local_path: str | Path | None = None
) -> Path:
    """Path of GPT-2's model.safetensors: `local_path`, $LOSSLENS_GPT2_<size>_SAFETENSORS, or the Hub.

    The Hub download goes through huggingface_hub: its cache (under LossLens' cache folder
    unless `cache_dir` is given), resumable partial downloads, and HF_HUB_OFFLINE=1.
    """
    check_size(size)
    local = local_path or os.environ.get(weights_env(size))
    if local:
        path = Path(local)
        if not path.is_file():
            raise WeightsError(f"GPT-2 {size} weights not found at {path}.")
        return path
    try:
        return Path(
            huggingface_hub.hf_hub_download(
                repo_id=HF_REPOS[size],
                filename=FILENAME,
                cache_dir=str(cache_dir or default_cache() / "huggingface"),
            )
        )
    except _network_errors() as e:
        reason = (str(e).splitlines() or ["no connection"])[0].split(". ")[0].rstrip(".")
        offline = (
            " HF_HUB_OFFLINE is set, so only the local cache is searched."
            if huggingface_hub.constants.HF_HUB_OFFLINE
            else ""
        )
        raise WeightsError(
            f"Could not download GPT-2 {size} ({HF_REPOS[size]}/{FILENAME} on the Hugging Face Hub): "
            f"{type(e).__name__}: {reason}.{offline} Connect to the internet and retry (an interrupted "
            f"download resumes), or download {FILENAME} elsewhere and point {weights_env(size)} at it."
        ) from e


def cached_gpt2_path(size: str = "124M", cache_dir: str | Path | None = None) -> Path | None:
    """The local model.safetensors for `size` if it is already here (no network), else None."""
    try:
        local = os.environ.get(weights_env(check_size(size)))
        if local:
            return Path(local) if Path(local).is_file() else None
        folder = str(cache_dir or default_cache() / "huggingface")
        found = huggingface_hub.try_to_load_from_cache(HF_REPOS[size], FILENAME, cache_dir=folder)
        return Path(found) if isinstance(found, str) else None
    except (OSError, ValueError):
        return None


def load_pretrained_gpt2(size: str = "124M", local_path: str | Path | None = None) -> GPTModel:
    """Download (or find) and load OpenAI's GPT-2 `size`, checking free RAM first."""
    check_memory(size)
    path = download_gpt2_safetensors(size, local_path=local_path)
    cfg = {**GPT2_SMALL_CONFIG, **GPT2_MODEL_CONFIGS[SIZE_NAMES[size]]}
    return load_gpt2_weights(path, cfg)
