"""Confidence against surprise: per prediction, the entropy of the model's distribution
beside the target's surprisal and rank (GLTR's buckets: top 10 / 100 / 1000 / beyond).

The expected surprisal under the model's own distribution is its entropy, so a point far
above the line surprisal = entropy is a confident prediction that was wrong."""

from __future__ import annotations

import torch

BUCKETS = [(10, "top 10"), (100, "top 100"), (1000, "top 1000"), (None, "beyond 1000")]


def bucket(rank: int) -> int:
    """Index into BUCKETS of a rank (1 = the model's favourite)."""
    for n, (limit, _) in enumerate(BUCKETS):
        if limit is None or rank <= limit:
            return n
    raise AssertionError


def confidence(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> dict:
    """logits [N, V] of the real predictions and their targets [N] -> plain per-position lists."""
    with torch.inference_mode():
        z = logits.float() / float(temperature)
        log_p = torch.log_softmax(z, dim=-1)
        p = log_p.exp()
        entropy = -torch.special.xlogy(p, p).sum(-1)  # p = 0 contributes 0, not NaN
        surprisal = -log_p.gather(-1, targets[:, None]).squeeze(-1)
        rank = (z > z.gather(-1, targets[:, None])).sum(-1) + 1
        top_p = p.max(-1).values
    ranks = rank.tolist()
    buckets = [bucket(r) for r in ranks]
    return {
        "entropy": entropy.tolist(),
        "surprisal": surprisal.tolist(),
        "rank": ranks,
        "bucket": buckets,
        "top_proba": top_p.tolist(),
        "histogram": [buckets.count(n) for n in range(len(BUCKETS))],
        "bucket_names": [name for _, name in BUCKETS],
    }
