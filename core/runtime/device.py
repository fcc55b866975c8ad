"""Where the model runs: `auto` picks CUDA, then Apple's MPS, then the CPU, as the book's code does.

The choice comes from an argument (`--device`, the sidebar), else $LOSSLENS_DEVICE (for servers),
else `auto`. On the CPU the book's numbers are exact; on a GPU they agree within 1e-4 because
TF32 (10-bit mantissa matmuls) is switched off here.
"""

from __future__ import annotations

import os

import torch

from core.errors import InvalidParameterError
from core.runtime.memory import free_ram_gb

DEVICE_ENV = "LOSSLENS_DEVICE"
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def available_devices() -> list[str]:
    """The device kinds this machine can run on, fastest first (always ends with "cpu")."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    if _mps_available():
        found.append("mps")
    return [*found, "cpu"]


def resolve_device(name: str | None = None) -> torch.device:
    """`name` ("auto", "cpu", "cuda", "cuda:1", "mps"), else $LOSSLENS_DEVICE, else "auto".

    Raises InvalidParameterError for an unknown name or a device this machine lacks, naming
    the ones it has.
    """
    name = (name or os.environ.get(DEVICE_ENV) or "auto").strip().lower()
    have = available_devices()
    if name == "auto":
        name = have[0]
    kind = name.split(":", 1)[0]
    if kind not in DEVICE_CHOICES:
        raise InvalidParameterError(f"Unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}.")
    if kind not in have:
        raise InvalidParameterError(
            f"This machine has no {kind.upper()} device (torch {torch.__version__}); "
            f"choose one of {', '.join(['auto', *have])}."
        )
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise InvalidParameterError(f"Invalid device {name!r}: {e}") from None
    if device.type == "cuda":
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidParameterError(
                f"There is no {name}: this machine has {torch.cuda.device_count()} CUDA device(s)."
            )
        exact_float32()
    return device


def exact_float32() -> None:
    """Full float32 matmuls on CUDA: TF32 would move the book's loss in the fourth decimal."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def model_device(model: torch.nn.Module) -> torch.device:
    """The device a model's weights live on (the CPU for a model without parameters)."""
    return next(model.parameters(), torch.empty(0)).device


def available_ram_gb() -> float | None:
    """RAM this server may still use: core.runtime.memory's budget (the container's cgroup limit, or
    $LOSSLENS_MEMORY_LIMIT, less what is used; else MemAvailable), None where unknown."""
    return free_ram_gb()


def available_memory_gb(device: str | torch.device = "cpu") -> float | None:
    """Free memory where `device`'s tensors live: the GPU's own memory for CUDA, the RAM that
    MPS shares with the CPU (within the driver's recommended budget), else the RAM budget."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free / 1024**3
    if device.type == "mps":
        budget = torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
        ram = available_ram_gb()
        return min(budget / 1024**3, ram) if ram is not None else budget / 1024**3
    return available_ram_gb()


def describe(device: str | torch.device) -> str:
    """A short name for the UI and the CLI: "CPU", "CUDA (NVIDIA H100 80GB HBM3)", "MPS"."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(device)})"
    return device.type.upper()


def to_device_with_room(
    model: torch.nn.Module, label: str, device: torch.device, error=InvalidParameterError
):
    """`model` (built on the CPU) moved to `device`, refused with `error` where that device lacks the
    memory for its weights. On the CPU it stays as it is (its weights may be packed)."""
    if device.type == "cpu":
        return model
    need = sum(p.numel() * p.element_size() for p in model.parameters()) / 1024**3
    free = available_memory_gb(device)
    if free is not None and free < need:
        raise error(
            f"{label} needs {need:.1f} GB on {describe(device)}, which has {free:.1f} GB free. "
            "Choose the CPU or a smaller model."
        )
    return model.to(device)
