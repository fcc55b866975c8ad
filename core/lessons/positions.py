"""Loss by position in the window: the mean cross entropy at positions 0..context_length-1 over
all windows of a split, from the same one forward pass per batch as the split's loss.

Position 0 predicts from one token of context, the last position from context_length tokens:
a trained model pays most at the start of every window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import torch
import torch.nn.functional as F

from core.lessons.dataset import EvaluationCancelled, check_batches
from core.models.corpus import validate_corpus_text
from core.models.loaders import LoaderSettings, make_loaders

Progress = Callable[[int, int, str], None]


def _split(loader, model, n: int, device, on_batch, cancel) -> dict:
    sums = counts = None
    batch_losses: list[float] = []
    for i, (x, y) in enumerate(loader):
        if i >= n:
            break
        if cancel and cancel():
            raise EvaluationCancelled(batch_losses)
        with torch.inference_mode():
            logits = model(x.to(device)).flatten(0, 1)
            y = y.to(device)
            batch_losses.append(F.cross_entropy(logits, y.flatten()).item())  # calc_loss_batch, as the book
            ce = F.cross_entropy(logits, y.flatten(), reduction="none").view(y.shape).double().cpu()
        if sums is None:
            sums = torch.zeros(ce.shape[1], dtype=torch.float64)
            counts = torch.zeros(ce.shape[1], dtype=torch.long)
        sums += ce.sum(0)
        counts += ce.shape[0]
        on_batch(len(batch_losses))
    means = (sums / counts).tolist()
    return {
        "loss": sum(batch_losses) / len(batch_losses),  # calc_loss_loader: the mean of batch losses
        "token_weighted_loss": float(sums.sum() / counts.sum()),
        "position_means": means,
        "counts": counts.tolist(),
        "batch_losses": batch_losses,
        "context_length": len(means),
    }


def position_losses(
    model,
    text: str,
    settings: LoaderSettings | None = None,
    num_batches: int | None = None,
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
    tokenizer=None,
) -> dict:
    """Per split: the book's loss, the token-weighted loss, and the mean loss at each position with
    its count of windows. With the book's loaders (drop_last=True for training, equal windows),
    the count-weighted position means equal the split's loss. Returns {"cancelled": True} when
    cancel() stopped it."""
    settings = (settings or LoaderSettings()).validate(model.cfg["context_length"])
    if model.training:
        raise RuntimeError("position_losses needs a model in eval mode (dropout off)")
    validate_corpus_text(text)
    data = make_loaders(text, settings, tokenizer)
    check_batches(data)
    device = next(model.parameters()).device
    n_train = len(data.train_loader) if num_batches is None else min(num_batches, len(data.train_loader))
    n_val = len(data.val_loader) if num_batches is None else min(num_batches, len(data.val_loader))
    total = n_train + n_val
    out = {"settings": asdict(settings), "num_batches": num_batches, "cancelled": False}
    if progress:
        progress(0, total, "train")
    try:
        for name, loader, n, offset in (
            ("train", data.train_loader, n_train, 0),
            ("val", data.val_loader, n_val, n_train),
        ):
            out[name] = _split(
                loader,
                model,
                n,
                device,
                lambda k, name=name, offset=offset: progress and progress(offset + k, total, name),
                cancel,
            )
    except EvaluationCancelled:
        return {**out, "cancelled": True}
    return out
