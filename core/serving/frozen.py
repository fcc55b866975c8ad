"""Models as serving hands them out: frozen, and made faster by the CPU plug-in (core.fast).

The registry and loaders return plain frozen book models; `freeze` accelerates one where it is
shared with visitors. LOSSLENS_FAST=0 switches the plug-in off: the book's modules on stock
PyTorch, the same numbers within float32 rounding. `building()` lets a build on a background
thread pause for visitors between its parts.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.nn as nn

from core.runtime import rng
from core.serving.priority import pause_point

FAST_ENV = "LOSSLENS_FAST"


def fast_enabled() -> bool:
    return os.environ.get(FAST_ENV, "1") != "0"


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: inference only, so one copy can serve every session; then, on
    the CPU in float32 and unless LOSSLENS_FAST=0, the plug-in's faster modules (same numbers)."""
    model.eval().requires_grad_(False)
    if fast_enabled() and _cpu_float32(model):
        from core import fast  # the plug-in's one caller

        return fast.accelerate(model)
    return share_masks(model)


def _cpu_float32(model: nn.Module) -> bool:
    return all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())


def share_masks(model: nn.Module) -> nn.Module:
    """The book's causal masks are equal in every block of a model: one tensor for all of them
    (at GPT-2's 1024 tokens each is 4 MB)."""
    masks = {}
    for module in model.modules():
        mask = module._buffers.get("mask")
        if mask is not None:
            key = (tuple(mask.shape), mask.device, mask.dtype)
            kept = masks.setdefault(key, mask)
            if kept is not mask and torch.equal(kept, mask):
                module._buffers["mask"] = kept
    return model


def build_untrained_model(seed: int = 123, cfg: dict | None = None) -> nn.Module:
    """The book's untrained model, seeded, frozen and served (see freeze)."""
    return freeze(rng.build_untrained_model(seed, cfg))


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the OS where the plug-in can (glibc); else False."""
    try:
        from core.fast import release_free_memory as release
    except ImportError:
        return False
    return release()


@contextlib.contextmanager
def building():
    """Within, every submodule registered on this thread is a point where a build on a background
    thread may wait for visitors (priority.pausing): torch's global module-registration hook, so
    the book's classes need not know about it. pause_point() is a no-op on other threads."""

    def hook(module, name, submodule):
        pause_point()

    handle = torch.nn.modules.module.register_module_module_registration_hook(hook)
    try:
        yield
    finally:
        handle.remove()
