"""Loss, perplexity and mean entropy against temperature, from one forward pass.

Dividing the logits by T and taking the cross entropy is all compute_loss does with a
temperature, so the whole curve needs the logits once and a softmax per temperature.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from core.errors import InvalidParameterError
from core.lessons.loss import perplexity

T_MIN, T_MAX, POINTS = 0.05, 20.0, 27  # a log grid: 10 points per decade


@dataclass
class Sweep:
    temperatures: list[float]
    losses: list[float]
    perplexities: list[float]
    entropies: list[float]  # mean entropy of the predicted distributions, nats
    current: float  # the sidebar's temperature (also a point of the curve)
    current_loss: float
    best: float  # the temperature with the lowest loss (grid, then golden-section search)
    best_loss: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["perplexities"] = [p if math.isfinite(p) else "inf" for p in self.perplexities]
        return d


def grid(t_min: float = T_MIN, t_max: float = T_MAX, points: int = POINTS) -> list[float]:
    if not 0 < t_min < t_max or points < 2:
        raise InvalidParameterError(
            f"a temperature range needs 0 < min < max and 2+ points, got {t_min}, {t_max}"
        )
    step = math.log(t_max / t_min) / (points - 1)
    return [t_min * math.exp(i * step) for i in range(points)]


def loss_and_entropy(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> tuple[float, float]:
    """Cross entropy (as compute_loss takes it) and mean entropy of softmax(logits / T).

    logits [N, V] float32 of the real predictions, targets [N]."""
    # One log_softmax serves both; F.cross_entropy is nll_loss(log_softmax(z)), the same numbers.
    log_p = torch.log_softmax(logits / float(temperature), dim=-1)
    loss = F.nll_loss(log_p, targets)
    p = log_p.exp()
    # H = -sum p log p; where p underflows to 0, p log p is 0 (xlogy keeps it finite).
    entropy = -torch.special.xlogy(p, p).sum(-1).mean()
    return float(loss), float(entropy)


def temperature_sweep(
    logits: torch.Tensor,
    targets: torch.Tensor,
    current: float = 1.0,
    temperatures: list[float] | None = None,
    refine: int = 10,
) -> Sweep:
    """The curve over `temperatures` (default: grid()) plus the current temperature, and the
    loss-minimising temperature: the best grid point refined by golden-section search."""
    ts = sorted(set(temperatures or grid()) | {float(current)})
    with torch.inference_mode():
        values = [loss_and_entropy(logits, targets, t) for t in ts]
        losses = [v[0] for v in values]
        i = min(range(len(ts)), key=losses.__getitem__)
        best, best_loss = ts[i], losses[i]
        # The loss is smooth in log T: search the bracket around the best grid point.
        lo, hi = math.log(ts[max(i - 1, 0)]), math.log(ts[min(i + 1, len(ts) - 1)])
        g = (math.sqrt(5) - 1) / 2
        for _ in range(refine if hi > lo else 0):
            a, b = hi - g * (hi - lo), lo + g * (hi - lo)
            la = float(F.cross_entropy(logits / math.exp(a), targets))
            lb = float(F.cross_entropy(logits / math.exp(b), targets))
            for t, loss in ((math.exp(a), la), (math.exp(b), lb)):
                if loss < best_loss:
                    best, best_loss = t, loss
            if la < lb:
                hi = b
            else:
                lo = a
    return Sweep(
        temperatures=ts,
        losses=losses,
        perplexities=[perplexity(x) for x in losses],
        entropies=[v[1] for v in values],
        current=float(current),
        current_loss=losses[ts.index(float(current))],
        best=best,
        best_loss=best_loss,
    )
