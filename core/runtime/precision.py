"""The optional bfloat16 "fast" mode: where it is fast, and the autocast that runs it.

Autocast keeps the weights in float32 and runs the matmuls in bfloat16 (8 bits of mantissa
instead of 24), so losses move in their third or fourth digit. The book's numbers are float32
and stay the default. bfloat16 is fast only where the hardware has it: a CUDA GPU from Ampere
on, or a CPU with AVX-512 BF16 or AMX; elsewhere the CPU converts every operand and the pass
runs several times slower than float32 (5x on a 2-core AVX2 EPYC), so the app does not offer it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

FORCE_ENV = "LOSSLENS_BF16"  # "1": offer bfloat16 even where it is not native (slow, to see its rounding)
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def bf16_unavailable(device="cpu") -> str | None:
    """None where bfloat16 is native on `device`; else why the fast mode is not offered."""
    if os.environ.get(FORCE_ENV) == "1":
        return None
    kind = torch.device(device).type
    if kind == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return None
        return f"this GPU ({torch.cuda.get_device_name(device)}) has no native bfloat16"
    if kind == "cpu":
        if cpu_flags() & set(CPU_BF16_FLAGS):
            return None
        return (
            "this CPU has no native bfloat16 (AVX-512 BF16 or AMX): bfloat16 would run several "
            "times slower than float32 here"
        )
    return f"bfloat16 is offered on CUDA GPUs and CPUs with AVX-512 BF16 or AMX, not on {kind}"


def autocast(device, fast: bool):
    """bfloat16 autocast on `device` when `fast`, else nothing (float32, the book's numbers)."""
    if not fast:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
