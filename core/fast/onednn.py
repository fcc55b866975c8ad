"""oneDNN's fused linear through torch's private mkldnn ops, each behind a guard.

Why: for a sentence's few rows MKL's float32 GEMM streams the weights slowly, and for the
50257-wide out_head its (W @ x^T)^T view costs the loss steps a copy; oneDNN's linear returns rows
and gives the same bits on any thread count. Where the ops are missing, `AVAILABLE` is False and
every layer keeps torch's public F.linear.
"""

from __future__ import annotations

import os
import platform

import torch
import torch.nn.functional as F

# oneDNN keeps a compiled kernel and its buffers per input shape, and every token count is a new
# shape: unbounded, a server grows with each sentence length. Re-creating one is cheap, so a small
# cache loses no speed. Read at oneDNN's first use (after this import); a value set by the user wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")
os.environ.setdefault("LRU_CACHE_CAPACITY", "16")  # ideep's cache in front of oneDNN's

# oneDNN's packing copies a weight before the plain one is freed: the out_head would be
# held twice for a moment at every build, so weights above this stay plain.
PACK_MAX_BYTES = 64 * 2**20


def _available() -> bool:
    """oneDNN's fused linear on x86-64, unless LOSSLENS_ONEDNN=0."""
    if os.environ.get("LOSSLENS_ONEDNN", "1") == "0" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        ops = torch.ops.mkldnn
        return (
            torch.backends.mkldnn.is_available()
            and hasattr(ops, "_linear_pointwise")
            and hasattr(ops, "_reorder_linear_weight")
        )
    except (AttributeError, RuntimeError):
        return False


# Switched off by LOSSLENS_ONEDNN=0; bench/bench_loss.py flips it to time both kernels.
AVAILABLE = _available()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ W^T + bias on oneDNN (weight plain or from reorder()); F.linear where oneDNN is off."""
    if not AVAILABLE:
        return F.linear(x, weight.to_dense() if weight.is_mkldnn else weight, bias)
    # oneDNN sizes its OpenMP team from this thread's setting, which a new thread (a Streamlit
    # script run, a worker) starts at the core count: follow torch's count.
    torch.set_num_threads(torch.get_num_threads())
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")


def reorder(weight: torch.Tensor) -> torch.Tensor | None:
    """The weight in oneDNN's blocked layout (an opaque tensor), or None where that is not offered."""
    if not AVAILABLE or weight.numel() * weight.element_size() > PACK_MAX_BYTES:
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
    except (AttributeError, RuntimeError):
        return None
