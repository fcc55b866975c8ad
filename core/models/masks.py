"""The book's causal-mask buffers in state dicts: left out of saved files, put back on loading.

The book's MultiHeadAttention registers its mask as a buffer, so the book's state dicts carry
`trf_blocks.N.att.mask`. It is no weight: LossLens saves none, accepts them, and loads every model
with one mask shared by all its blocks (4 MB at GPT-2's 1024 tokens, instead of 4 MB per block).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

MASK_KEY = re.compile(r"trf_blocks\.\d+\.att\.mask$")


def without_masks(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not MASK_KEY.search(k)}


def with_masks(weights: dict[str, torch.Tensor], cfg: dict) -> dict[str, torch.Tensor]:
    """`weights` (in place) with one book mask for every block, replacing any given."""
    n = cfg["context_length"]
    mask = torch.triu(torch.ones(n, n), diagonal=1)
    for k in [k for k in weights if MASK_KEY.search(k)]:
        del weights[k]
    for i in range(cfg["n_layers"]):
        weights[f"trf_blocks.{i}.att.mask"] = mask
    return weights
