"""accelerate(): a frozen book model made faster for inference by swapping its modules, as torch's
quantization swaps modules; plain(): a copy with the book's modules again."""

from __future__ import annotations

import copy
from collections import Counter

import torch.nn as nn

from core.book import model as book
from core.fast import panel
from core.fast.blocks import FastAttention, FastBlock, FastFeedForward, FastGELU, FastLayerNorm
from core.fast.linear import PackedLinear, PackedWeight
from core.fast.memory import huge_empty, release_free_memory


def _parents(model: nn.Module, found=None) -> list:
    """(parent, name, child) for every submodule, in model.modules()'s order, collected first."""
    found = [] if found is None else found
    for name, child in model.named_children():
        found.append((model, name, child))
        _parents(child, found)
    return found


def accelerate(model: nn.Module) -> nn.Module:
    """Swap a frozen (eval, no gradients) float32 CPU book model's modules in place for fast ones
    computing the same function, and return it. Each linear weight is packed for the fastest
    kernel measured here (PackedLinear); a weight shared with another layer (GPT-2's tied
    out_head) stays plain, or it would be held twice. Idempotent: a model read back from a pickle
    is packed again."""
    if model.training or any(p.requires_grad for p in model.parameters()):
        raise ValueError("accelerate() takes a frozen model: call model.eval().requires_grad_(False) first")
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    linears = [
        (parent, name, child)
        for parent, name, child in _parents(model)
        if isinstance(child, nn.Linear) and not isinstance(child.weight, PackedWeight)
    ]
    packable = [uses[id(child.weight)] == 1 for _, _, child in linears]
    # LossLens's panels go side by side on huge pages, one mapping per model; a part that a layer
    # does not take (oneDNN's, or a plain weight) is never touched, so never held.
    sizes = [
        -(-c.weight.numel() // panel.ALIGN) * panel.ALIGN if ok else 0
        for (_, _, c), ok in zip(linears, packable, strict=True)
    ]
    arena = huge_empty(sum(sizes)) if sum(sizes) and panel.selected() else None
    offset = 0
    for (parent, name, child), ok, size in zip(linears, packable, sizes, strict=True):
        into = None if arena is None or not ok else arena[offset : offset + child.weight.numel()]
        offset += size
        contiguous = getattr(
            child, "contiguous_output", not (isinstance(parent, book.GPTModel) and name == "out_head")
        )
        fast = PackedLinear.from_linear(child, contiguous_output=contiguous, pack=ok, into=into)
        if isinstance(fast.weight, PackedWeight):
            release_free_memory()  # a freed plain weight or packing buffer, before the next layer
        setattr(parent, name, fast)
    for parent, name, child in reversed(_parents(model)):  # children first: a block takes its new ones
        swap = {
            book.LayerNorm: FastLayerNorm.from_book,
            book.GELU: lambda m: FastGELU().train(m.training),
            book.MultiHeadAttention: FastAttention.from_book,
            book.FeedForward: FastFeedForward.from_book,
            book.TransformerBlock: FastBlock.from_book,
        }.get(type(child))
        if swap is not None:
            setattr(parent, name, swap(child))
    for block in model.modules():
        if isinstance(block, FastBlock):
            block.remember_panels()
    return model


def plain(model: nn.Module) -> nn.Module:
    """A deep copy with the book's modules and plain weights (to train): the model is untouched."""
    return copy.deepcopy(model)


def is_accelerated(model: nn.Module) -> bool:
    return any(isinstance(m, (PackedLinear, FastBlock, FastAttention)) for m in model.modules())
