"""The opt-in CPU inference plug-in: `accelerate(model)` swaps a frozen book model's modules for
faster ones with the same results (LossLens's panel kernel, oneDNN's linear, fused attention,
layer norm and GELU). Every private torch API the app uses lives in this package, behind a guard
that falls back to public torch. Deleting the package and its one caller (core.serving.frozen)
leaves the app on stock PyTorch."""

from core.fast.memory import release_free_memory, reusing_outputs
from core.fast.swap import accelerate, is_accelerated, plain

__all__ = ["accelerate", "is_accelerated", "plain", "release_free_memory", "reusing_outputs"]
