"""Section 5.1.3: the loss over whole data sets, with progress reporting and a stop button.

evaluate_dataset runs both splits for the app and the CLI with the book's semantics
(core/book/loss.py: a split's loss is the mean of its batch losses), and explains, rather than
returns NaN, when a split has no batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from core.errors import InvalidParameterError, NoBatchesError
from core.lessons.loss import IGNORE_INDEX, perplexity
from core.models.corpus import validate_corpus_text
from core.models.loaders import DataSplit, LoaderSettings, make_loaders
from core.runtime.device import model_device
from core.runtime.precision import autocast

Cancel = Callable[[], bool]


class EvaluationCancelled(Exception):
    """cancel() returned True; `batch_losses` holds the losses computed before that."""

    def __init__(self, batch_losses: list[float]):
        super().__init__(f"cancelled after {len(batch_losses)} batches")
        self.batch_losses = batch_losses


def batch_loss(input_batch, target_batch, model, device):
    """The book's calc_loss_batch, with F.cross_entropy's same bits from cross_entropy below.

    On the CPU the logits may arrive as rows or as a transposed view of a [vocab, tokens] matmul;
    flattening keeps either a view, and cross_entropy reads it as it is.
    """
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch)
    return cross_entropy(logits.flatten(0, 1), target_batch.flatten())


# Rows per log-softmax in cross_entropy: a block of a few MB that the heap reuses, instead of one
# fresh [tokens, vocab] mapping per batch that the OS faults in page by page.
LOG_SOFTMAX_ROWS = 32


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """F.cross_entropy(logits, targets) (mean, ignore_index -100), the very same bits.

    It is nll_loss of log_softmax, and a row's log-softmax never depends on the other rows; so
    without gradients, in float32 on the CPU, the log-softmax goes LOG_SOFTMAX_ROWS rows at a time
    and nll_loss takes the picked values as the whole call would, in less time (bench_dataset.py times it).
    Elsewhere (training, autocast, a GPU) it is F.cross_entropy itself."""
    if (
        (torch.is_grad_enabled() and logits.requires_grad)
        or logits.device.type != "cpu"
        or logits.dtype != torch.float32
        or torch.is_autocast_enabled("cpu")
        or logits.shape[0] <= LOG_SOFTMAX_ROWS
    ):
        return F.cross_entropy(logits, targets)
    picked = torch.cat(
        [
            F.log_softmax(rows, dim=-1).gather(1, t.clamp(min=0)[:, None])
            for rows, t in zip(logits.split(LOG_SOFTMAX_ROWS), targets.split(LOG_SOFTMAX_ROWS), strict=True)
        ]
    )
    return F.nll_loss(picked, torch.where(targets == IGNORE_INDEX, IGNORE_INDEX, 0))


def _batch_losses(data_loader, model, device, num_batches, fast=False) -> Iterator[float]:
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        # Entered per batch, not around the loop: grad mode (and autocast) is thread-local,
        # and it must not stay off in the caller while this generator waits (or is abandoned).
        with torch.inference_mode(), autocast(device, fast):
            loss = batch_loss(input_batch, target_batch, model, device).item()
        yield loss


def _num_batches(data_loader, num_batches) -> int:
    if num_batches is None:
        return len(data_loader)
    # The book: more batches than the loader has means all of them.
    return min(num_batches, len(data_loader))


def _run(data_loader, model, device, total, cancel, losses, fast=False) -> Iterator[float]:
    """Yield each batch loss, appended to `losses`; stop cooperatively when cancel() says so."""
    if cancel and cancel():
        raise EvaluationCancelled(losses)
    for loss in _batch_losses(data_loader, model, device, total, fast):
        losses.append(loss)
        yield loss
        if len(losses) < total and cancel and cancel():
            raise EvaluationCancelled(losses)


@dataclass
class DatasetLosses:
    data: DataSplit  # counts, settings and warnings (without the loaders)
    train_loss: float | None  # None when cancelled before the split finished
    val_loss: float | None
    train_batch_losses: list[float] = field(default_factory=list)
    val_batch_losses: list[float] = field(default_factory=list)
    num_batches: int | None = None
    cancelled: bool = False
    precision: str = "float32"  # "bfloat16" in the fast mode
    # The fast mode's yardstick: each split's first batch again in float32, {"train": …, "val": …}.
    float32_first_batch: dict[str, float] | None = None

    @property
    def bf16_differences(self) -> dict[str, float] | None:
        """bfloat16 minus float32 loss on each split's first batch (the same data); None in float32."""
        if not self.float32_first_batch:
            return None
        firsts = {"train": self.train_batch_losses, "val": self.val_batch_losses}
        return {k: firsts[k][0] - v for k, v in self.float32_first_batch.items() if firsts[k]}

    @property
    def train_perplexity(self) -> float | None:
        return _perplexity(self.train_loss)

    @property
    def val_perplexity(self) -> float | None:
        return _perplexity(self.val_loss)

    @property
    def warnings(self) -> list[str]:
        return self.data.warnings

    def to_dict(self) -> dict:
        return {
            **self.data.to_dict(),
            "num_batches": self.num_batches,
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "train_perplexity": self.train_perplexity,
            "val_perplexity": self.val_perplexity,
            "train_batch_losses": list(self.train_batch_losses),
            "val_batch_losses": list(self.val_batch_losses),
            "cancelled": self.cancelled,
            "precision": self.precision,
            "float32_first_batch": self.float32_first_batch,
            "bf16_differences": self.bf16_differences,
        }


def _perplexity(loss: float | None) -> float | None:
    return None if loss is None else perplexity(loss)


def check_batches(data: DataSplit) -> None:
    s = data.settings
    for split, label, fix in (
        (data.train, "training", "a higher train ratio"),
        (data.val, "validation", "a lower train ratio"),
    ):
        if split.batches:
            continue
        need = (
            s.context_length + 1 + (s.batch_size - 1) * s.stride
            if split.name == "train"
            else s.context_length + 1
        )
        what = f"a full batch of {s.batch_size} windows" if split.name == "train" else "one window"
        raise NoBatchesError(
            f"The {label} split has no batch: "
            f"its {split.characters:,} characters are {split.tokens:,} tokens, "
            f"and {what} of context length {s.context_length} needs at least {need:,} tokens. "
            f"Use a longer text, a shorter context length, or {fix}."
        )


def evaluate_dataset(
    model,
    text: str,
    settings: LoaderSettings | None = None,
    num_batches: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: Cancel | None = None,
    tokenizer=None,
    fast: bool = False,
) -> DatasetLosses:
    """Training and validation loss of `model` on `text` with the book's loaders.

    progress(done, total, split) counts batches over both splits together (training
    first, then validation), so one progress bar covers the whole pass; `split` is
    "train" or "val". cancel() is checked between batches; a cancelled run returns
    what it has with cancelled=True. Raises NoBatchesError when a split has no batch.
    fast=True runs the matmuls in bfloat16 (core.runtime.precision), then each split's first batch
    again in float32, so the result says how far bfloat16 moved the loss on the same data.
    """
    settings = settings or LoaderSettings()
    if model.training:
        raise RuntimeError("evaluate_dataset needs a model in eval mode (dropout off)")
    settings.validate(model.cfg["context_length"])
    if num_batches is not None and (
        isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1
    ):
        raise InvalidParameterError(
            f"The number of batches must be a whole number >= 1, got {num_batches!r}."
        )
    validate_corpus_text(text)
    data = make_loaders(text, settings, tokenizer)
    check_batches(data)

    device = model_device(model)  # the batches go where the weights are (CPU, CUDA or MPS)
    n_train = _num_batches(data.train_loader, num_batches)
    n_val = _num_batches(data.val_loader, num_batches)
    total = n_train + n_val
    # The result keeps the counts, not the loaders: small, and picklable for a UI cache.
    result = DatasetLosses(
        replace(data, train_loader=None, val_loader=None), None, None, num_batches=num_batches,
        precision="bfloat16" if fast else "float32",
    )  # fmt: skip
    if progress:
        progress(0, total, "train")
    for name, loader, n, losses, offset in (
        ("train", data.train_loader, n_train, result.train_batch_losses, 0),
        ("val", data.val_loader, n_val, result.val_batch_losses, n_train),
    ):
        try:
            for _ in _run(loader, model, device, n, cancel, losses, fast):
                if progress:
                    progress(offset + len(losses), total, name)
        except EvaluationCancelled:
            result.cancelled = True
            return result
        mean = sum(losses) / n
        if name == "train":
            result.train_loss = mean
        else:
            result.val_loss = mean
    if fast:
        result.float32_first_batch = {
            name: next(_batch_losses(loader, model, device, 1))
            for name, loader in (("train", data.train_loader), ("val", data.val_loader))
        }
    return result
