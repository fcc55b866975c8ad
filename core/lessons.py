"""One forward pass for the views that read the logits themselves (sweep, units, confidence...).

The logits stay in `core`: the functions of core.sweep, core.units, core.confidence and
core.gradient reduce them to per-position numbers and top-k lists before anything leaves.
"""

from __future__ import annotations

import tiktoken
import torch

from .loss import Batch, prepare_batch


def forward(model: torch.nn.Module, texts: list[str], tokenizer: tiktoken.Encoding | None = None,
            ) -> tuple[Batch, torch.Tensor]:
    """The checked batch and its float32 logits [B, T, V], without gradients."""
    batch = prepare_batch(texts, model.cfg["context_length"], tokenizer)
    if model.training:
        raise RuntimeError("forward needs a model in eval mode (dropout off)")
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(batch.inputs.to(device)).float().cpu()
    return batch, logits


def predictions(logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The real predictions only, text after text: logits [N, V] and targets [N]."""
    return logits[batch.mask], batch.targets[batch.mask]
