"""Section 5.2's pretraining for the app: the book's train_model_simple, resumable.

train_model keeps the book's loop, its order and its log (core/book/train.py) and adds what a
page needs: optional callbacks (on_eval, on_sample, on_step, should_stop) and a TrainState that
a stopped run is saved to and resumed from exactly. The shuffle and dropout draw from torch's
global generator as in the book, so `torch.manual_seed(123)` before building the model
reproduces the book's log; `own_rng` keeps that stream apart from other threads' draws.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch

from core.book import train as book
from core.book.loss import calc_loss_batch
from core.book.train import generate_text_simple, text_to_token_ids, token_ids_to_text
from core.errors import NoBatchesError
from core.models.corpus import validate_corpus_text
from core.models.loaders import LoaderSettings, create_loader, split_text
from core.runtime.precision import autocast
from core.runtime.rng import own_rng

START_CONTEXT = "Every effort moves you"


def generate_sample(model, tokenizer, start_context=START_CONTEXT, max_new_tokens=50, device="cpu") -> str:
    """The book's generate_and_print_sample, returning the text (newlines folded) instead."""
    was_training = model.training
    model.eval()
    encoded = text_to_token_ids(start_context, tokenizer).to(device)
    token_ids = generate_text_simple(model, encoded, max_new_tokens, model.pos_emb.weight.shape[0])
    model.train(was_training)
    return token_ids_to_text(token_ids.cpu(), tokenizer).replace("\n", " ")


def evaluate_model(model, train_loader, val_loader, device, eval_iter, fast=False):
    """The book's evaluate_model; fast=True runs its matmuls in bfloat16 (core.runtime.precision)."""
    with autocast(device, fast):
        return book.evaluate_model(model, train_loader, val_loader, device, eval_iter)


def make_train_loaders(text: str, settings: LoaderSettings, tokenizer=None):
    """The book's training loaders: the train loader shuffles with the global generator."""
    validate_corpus_text(text)
    settings.validate()
    train_text, val_text = split_text(text, settings.train_ratio)
    L, S, B = settings.context_length, settings.stride, settings.batch_size
    train_loader = create_loader(train_text, tokenizer, B, L, S, shuffle=True, drop_last=True)
    val_loader = create_loader(val_text, tokenizer, B, L, S, shuffle=False, drop_last=False)
    for name, loader in (("training", train_loader), ("validation", val_loader)):
        if len(loader) == 0:
            raise NoBatchesError(
                f"The {name} split has no batch of {B} x {L} tokens: use a longer text or a smaller preset."
            )
    return train_loader, val_loader


# --- where a run is -------------------------------------------------------------------------


@dataclass
class TrainState:
    """Where a run is: enough to save it, plot it, and resume it exactly."""

    epoch: int = 0  # current epoch, 0-based
    batch: int = 0  # batches done in the current epoch
    global_step: int = -1  # the book's counter: -1 before the first step
    tokens_seen: int = 0
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    track_tokens_seen: list[int] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    # A bfloat16 run's yardstick, per evaluation: [train, val] loss in bfloat16 minus float32 on
    # the same batches (the recorded losses are float32). Empty for a float32 run.
    bf16_gaps: list[list[float]] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    stopped: bool = False
    # Global generator states: at the start of the current epoch (it drew the epoch's
    # shuffle) and now. Not saved in the JSON part; tensors go to the resume file.
    rng_epoch_start: torch.Tensor | None = field(default=None, repr=False)
    rng_now: torch.Tensor | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("rng_epoch_start"), d.pop("rng_now")
        return d

    def record(self, train_loss: float, val_loss: float) -> None:
        self.train_losses.append(train_loss)
        self.val_losses.append(val_loss)
        self.track_tokens_seen.append(self.tokens_seen)
        self.eval_steps.append(self.global_step)

    def stop(self) -> tuple[list[float], list[float], list[int]]:
        self.stopped = True
        return self.train_losses, self.val_losses, self.track_tokens_seen


def epoch_batches(train_loader, state: TrainState) -> Iterator:
    """The epoch's batches, each drawn on the run's own random stream.

    A fresh epoch remembers the generator state that draws its shuffle; a resumed one replays
    that shuffle, skips the batches already done, and goes on from the state saved at the stop.
    """
    with own_rng(state):
        if state.batch == 0:
            state.rng_epoch_start = torch.get_rng_state()
            batches = iter(train_loader)
        else:
            now = torch.get_rng_state()
            torch.set_rng_state(state.rng_epoch_start)
            batches = iter(train_loader)
            for _ in range(state.batch):
                next(batches)
            torch.set_rng_state(now)
    while True:
        with own_rng(state):  # the shuffle is drawn at the first next()
            batch = next(batches, None)
        if batch is None:
            return
        yield batch


# --- the book's loop, resumable --------------------------------------------------------------


def train_model(
    model,
    train_loader,
    val_loader,
    optimizer,
    device,
    num_epochs,
    eval_freq,
    eval_iter,
    start_context,
    tokenizer,
    *,
    state: TrainState | None = None,
    on_eval: Callable[[int, int, float, float], None] | None = None,
    on_sample: Callable[[int, str], None] | None = None,
    on_step: Callable[[TrainState], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    log: Callable[[str], None] | None = print,
    fast: bool = False,
):
    """The book's train_model_simple. Returns train_losses, val_losses, track_tokens_seen.

    `state` (fresh or resumed) is updated in place; should_stop() is asked after every step
    and ends the run with state.stopped = True, ready to be resumed. fast=True runs each
    step's forward pass in bfloat16 (core.runtime.precision); evaluations stay float32, and are done
    again in bfloat16 on the same batches to record how far it is (state.bf16_gaps).
    """
    s = state if state is not None else TrainState()
    should_stop = should_stop or (lambda: False)
    if len(train_loader) == 0:
        raise NoBatchesError(
            "The training loader has no batch: use a longer text or a shorter context length."
        )

    for epoch in range(s.epoch, num_epochs):
        model.train()
        for input_batch, target_batch in epoch_batches(train_loader, s):
            with own_rng(s):  # dropout, and the evaluation's pass over the shuffled train_loader
                optimizer.zero_grad()
                with autocast(device, fast):  # backward runs outside, in each op's forward dtype
                    loss = calc_loss_batch(input_batch, target_batch, model, device)
                loss.backward()
                optimizer.step()
                s.tokens_seen += input_batch.numel()
                s.global_step += 1
                s.batch += 1
                evaluated = s.global_step % eval_freq == 0
                if evaluated:
                    # The pass over train_loader draws its shuffle: a fast run replays it.
                    before = torch.get_rng_state() if fast else None
                    train_loss, val_loss = evaluate_model(model, train_loader, val_loader, device, eval_iter)
                    if fast:  # again in bfloat16 on the same batches (the same shuffle), then on
                        after = torch.get_rng_state()
                        torch.set_rng_state(before)
                        bf16 = evaluate_model(model, train_loader, val_loader, device, eval_iter, fast)
                        torch.set_rng_state(after)
                        s.bf16_gaps.append([bf16[0] - train_loss, bf16[1] - val_loss])
            if evaluated:
                s.record(train_loss, val_loss)
                if log:
                    log(
                        f"Ep {epoch + 1} (Step {s.global_step:06d}): "
                        f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}"
                        + (
                            f" (bfloat16 on the same batches: {s.bf16_gaps[-1][0]:+.4f}, "
                            f"{s.bf16_gaps[-1][1]:+.4f})"
                            if fast
                            else ""
                        )
                    )
                if on_eval:
                    on_eval(s.global_step, s.tokens_seen, train_loss, val_loss)
            if on_step:
                on_step(s)
            if s.batch < len(train_loader) and should_stop():
                return s.stop()

        sample = generate_sample(model, tokenizer, start_context, device=device)  # greedy: no random draws
        s.samples.append(sample)
        if log:
            log(sample)
        if on_sample:
            on_sample(epoch + 1, sample)
        s.epoch, s.batch = epoch + 1, 0
        if epoch + 1 < num_epochs and should_stop():
            return s.stop()

    s.stopped = False
    return s.train_losses, s.val_losses, s.track_tokens_seen
