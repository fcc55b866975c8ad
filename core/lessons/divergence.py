"""Two models on the same text, token by token: the difference in surprisal and KL(p_A || p_B).

Both read the same GPT-2 tokens, so their distributions at a position share one vocabulary.
"""

from __future__ import annotations

import tiktoken
import torch

from core.errors import InvalidParameterError
from core.lessons.views import forward, predictions


def token_divergence(logits_a: torch.Tensor, logits_b: torch.Tensor, targets: torch.Tensor) -> dict:
    """logits [N, V] of two models at the same predictions -> per-position surprisal of each, their
    difference (A − B, nats) and KL(p_A || p_B) = Σ p_A (log p_A − log p_B) in nats."""
    if logits_a.shape != logits_b.shape:
        raise InvalidParameterError(
            f"the models disagree on the shape: {list(logits_a.shape)} vs {list(logits_b.shape)}"
        )
    with torch.inference_mode():
        la = torch.log_softmax(logits_a.float(), dim=-1)
        lb = torch.log_softmax(logits_b.float(), dim=-1)
        kl = (la.exp() * (la - lb)).sum(-1).clamp_min(0)  # >= 0; rounding can give -1e-9
        sa = -la.gather(-1, targets[:, None]).squeeze(-1)
        sb = -lb.gather(-1, targets[:, None]).squeeze(-1)
    return {
        "surprisal_a": sa.tolist(),
        "surprisal_b": sb.tolist(),
        "difference": (sa - sb).tolist(),
        "kl": kl.tolist(),
    }


def compare_models(model_a, model_b, texts: list[str], tokenizer: tiktoken.Encoding | None = None) -> dict:
    """Run both models on `texts` (each must fit both contexts) and compare them token by token."""
    batch, logits_a = forward(model_a, texts, tokenizer)
    _, logits_b = forward(model_b, texts, tokenizer)
    za, y = predictions(logits_a, batch)
    zb, _ = predictions(logits_b, batch)
    return {**token_divergence(za, zb, y), "token_ids": batch.token_ids}
