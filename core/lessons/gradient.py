"""What the loss asks the model to change: its gradient on the logits, and real training steps.

For the mean cross entropy over N predictions, d loss / d logits = (softmax - one_hot(target)) / N:
the target's logit is pushed up by (1 - p_target) / N, every other token's pushed down by p / N.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import tiktoken
import torch
import torch.nn.functional as F

from core.errors import InvalidParameterError, LossLensError
from core.lessons.loss import prepare_batch
from core.runtime.device import available_memory_gb

BOOK_LR, BOOK_WEIGHT_DECAY = 0.0004, 0.1  # section 5.2: AdamW(lr=0.0004, weight_decay=0.1)
MAX_STEPS = 20


class NotEnoughMemoryError(LossLensError):
    """Too little free RAM for a private copy of the model and its optimizer state."""


def logit_gradient(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """d mean cross entropy / d logits for logits [N, V] and targets [N]: (softmax - one_hot) / N."""
    g = torch.softmax(logits.float(), dim=-1)
    g[torch.arange(len(targets)), targets] -= 1
    return g / len(targets)


def gradient_bars(logits: torch.Tensor, targets: torch.Tensor, k: int) -> list[dict]:
    """At each prediction: the gradient on its top-k tokens (by probability) and on its target."""
    n = len(targets)
    with torch.inference_mode():
        p = torch.softmax(logits.float(), dim=-1)
        top_p, top_ids = p.topk(min(k, p.shape[-1]), dim=-1)
        target_p = p.gather(-1, targets[:, None]).squeeze(-1)
        out = []
        for row, (ids, probas, target, pt) in enumerate(
            zip(top_ids.tolist(), top_p.tolist(), targets.tolist(), target_p.tolist(), strict=True)
        ):
            if target not in ids:
                ids, probas = ids + [target], probas + [pt]
            grads = [(q - (i == target)) / n for i, q in zip(ids, probas, strict=True)]
            out.append(
                {
                    "ids": ids,
                    "probas": probas,
                    "gradients": grads,
                    "target_id": target,
                    "num_predictions": n,
                    "push_up": (1 - pt) / n,  # minus the target's gradient
                    "push_down_elsewhere": (1 - pt) / n,  # the rest of the row sums to the same, spread by p
                    "shown_push_down": sum(g for i, g in zip(ids, grads, strict=True) if i != target),
                    "row": int(row),
                }
            )
    return out


# --- training steps on a private copy -------------------------------------------------


def _available_bytes(model: torch.nn.Module) -> int | None:
    """Free memory where the model's weights live (RAM, or the GPU's own memory)."""
    free = available_memory_gb(next(model.parameters()).device)
    return None if free is None else int(free * 1024**3)


def memory_needed(model: torch.nn.Module, optimizer: str) -> int:
    """Bytes a step needs beyond the shared model: the copy, its gradients, AdamW's two moments,
    plus a quarter for activations of a sentence-sized batch."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    copies = {"adamw": 4, "sgd": 2}[optimizer]
    return int(params * (copies + 0.25))


def choose_optimizer(model: torch.nn.Module, available: int | None = None) -> str:
    """AdamW as the book trains; SGD (no optimizer state) where RAM is short; else refuse."""
    available = _available_bytes(model) if available is None else available
    if available is None or available >= memory_needed(model, "adamw"):
        return "adamw"
    if available >= memory_needed(model, "sgd"):
        return "sgd"
    raise NotEnoughMemoryError(
        f"A training step needs about {memory_needed(model, 'sgd') / 2**30:.1f} GiB of free memory for a "
        f"private copy of the model and its gradients; {available / 2**30:.1f} GiB are free. "
        "Try again later, or with a smaller model."
    )


def make_optimizer(params, optimizer: str, lr: float = BOOK_LR, weight_decay: float = BOOK_WEIGHT_DECAY):
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    raise InvalidParameterError(f"optimizer must be 'adamw' or 'sgd', got {optimizer!r}")


@dataclass
class TrainSteps:
    optimizer: str
    lr: float
    weight_decay: float
    losses: list[float] = field(default_factory=list)  # before the first step, then after each
    target_probas: list[list[float]] = field(default_factory=list)  # [step][prediction]

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _measure(model, inputs, targets, mask) -> tuple[float, list[float]]:
    with torch.no_grad():
        logits = model(inputs).float()
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        p = torch.softmax(logits[mask], dim=-1).gather(-1, targets[mask][:, None]).squeeze(-1)
    return float(loss), p.tolist()


def train_steps(
    model: torch.nn.Module,
    texts: list[str],
    steps: int = 1,
    optimizer: str | None = None,
    lr: float = BOOK_LR,
    weight_decay: float = BOOK_WEIGHT_DECAY,
    tokenizer: tiktoken.Encoding | None = None,
    progress: Callable[[int, int], None] | None = None,
    return_model: bool = False,
):
    """`steps` optimizer steps on the batch of `texts`, on a deep copy (the shared model is untouched).

    Dropout stays off (eval mode), so a step is reproducible. Returns TrainSteps, and the trained
    copy as well with return_model=True."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise InvalidParameterError(f"steps must be a whole number from 1 to {MAX_STEPS}, got {steps!r}")
    optimizer = optimizer or choose_optimizer(model)
    if optimizer not in ("adamw", "sgd"):
        make_optimizer([], optimizer)  # raises the message
    batch = prepare_batch(texts, model.cfg["context_length"], tokenizer)
    device = next(model.parameters()).device
    inputs, targets = batch.inputs.to(device), batch.targets.to(device)
    mask = batch.mask.to(device)
    private = copy.deepcopy(model).eval().requires_grad_(True)
    opt = make_optimizer(private.parameters(), optimizer, lr, weight_decay)
    out = TrainSteps(optimizer, lr, weight_decay)
    loss, probas = _measure(private, inputs, targets, mask)
    out.losses.append(loss)
    out.target_probas.append(probas)
    for step in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(private(inputs).float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        loss.backward()
        opt.step()
        loss, probas = _measure(private, inputs, targets, mask)
        out.losses.append(loss)
        out.target_probas.append(probas)
        if progress:
            progress(step + 1, steps)
    if return_model:
        return out, private
    del private, opt
    return out
