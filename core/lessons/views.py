"""One forward pass for the views that read the logits themselves (sweep, units, confidence...).

The logits stay in `core`: the functions of core.lessons.sweep, core.lessons.units,
core.lessons.confidence and core.lessons.gradient reduce them to per-position numbers and top-k
lists before anything leaves.
"""

from __future__ import annotations

import math

import tiktoken
import torch

from core.lessons.confidence import confidence
from core.lessons.loss import Batch, prepare_batch
from core.lessons.sweep import temperature_sweep
from core.lessons.units import loss_units
from core.runtime.tokenizer_files import get_tokenizer


def forward(
    model: torch.nn.Module,
    texts: list[str],
    tokenizer: tiktoken.Encoding | None = None,
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


def lessons_report(result, tokenizer: tiktoken.Encoding | None = None) -> dict:
    """The lesson views' numbers for `python -m core loss --json`: units, entropy per position,
    and the loss-minimising temperature (from the same logits)."""
    tokenizer = tokenizer or get_tokenizer()
    batch = result.batch
    z, y = predictions(result.logits, batch)  # already divided by the temperature
    c = confidence(z, y)
    per_text, start = [], 0
    for ids in batch.token_ids:
        per_text.append(c["surprisal"][start : start + len(ids) - 1])
        start += len(ids) - 1
    s = temperature_sweep(z * result.temperature, y, current=result.temperature)
    entropy, start = [], 0
    for ids in batch.token_ids:
        entropy.append(c["entropy"][start : start + len(ids) - 1])
        start += len(ids) - 1
    return _json_safe(
        {
            "units": loss_units(batch.texts, batch.token_ids, per_text, tokenizer),
            "entropy": entropy,  # per text, per position: nats
            "rank_buckets": dict(zip(c["bucket_names"], c["histogram"], strict=True)),
            "temperature_optimal": s.best,
            "temperature_optimal_loss": s.best_loss,
        }
    )


def _json_safe(x):
    """inf (a perplexity past float range) as the string "inf", as core.lessons.report writes it."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and x in (math.inf, -math.inf):
        return "inf" if x > 0 else "-inf"
    return x
