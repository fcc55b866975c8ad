"""Figure 5.7: from logits to the cross-entropy loss, one named step at a time.

    logits -> probas -> target_probas -> log_probas -> avg_log_probas -> neg_avg_log_probas

Every step is kept as a tensor so the UI and the CLI can show it; then
torch.nn.functional.cross_entropy computes the same number from the logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import tiktoken
import torch
import torch.nn.functional as F

from core.book.tokenizer import ENDOFTEXT_ID
from core.errors import (
    ContextLengthError,
    EmptyTextError,
    InvalidParameterError,
    TooFewTokensError,
)
from core.runtime.tokenizer_files import encode, get_tokenizer

IGNORE_INDEX = -100  # F.cross_entropy's default: padded targets count for nothing
PAD_ID = ENDOFTEXT_ID  # what padded input positions hold (their logits are ignored)
MAX_TEXTS = 16  # rows of one batch
MAX_POSITIONS = 1024  # rows x padded length; bounds the [B, T, 50257] tensors (~200 MB each)
MAX_CHARS = 200_000  # refuse a huge paste before tokenizing it
# Listed next tokens (predictions x top-k): bounds the lists that leave core (JSON, UI); the
# book example with the whole vocabulary (6 x 50257) fits.
MAX_TOPK_ENTRIES = 500_000


def perplexity(loss: float) -> float:
    """exp(loss), and inf for a loss above ~709.8 nats (tiny temperatures): beyond float range."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


@dataclass
class Batch:
    """Texts as the book batches them: inputs = tokens[:-1], targets = tokens[1:]."""

    texts: list[str]
    token_ids: list[list[int]]
    inputs: torch.Tensor  # [B, T] long, padded with PAD_ID
    targets: torch.Tensor  # [B, T] long, padded with IGNORE_INDEX
    mask: torch.Tensor  # [B, T] bool, True where a target is real


@dataclass
class LossResult:
    batch: Batch
    temperature: float
    logits: torch.Tensor  # [B, T, V], already divided by the temperature
    probas: torch.Tensor  # [B, T, V] softmax over the full vocabulary
    target_probas: torch.Tensor  # [B, T], NaN where padded
    log_probas: torch.Tensor  # [N] text after text, as the book's torch.cat
    avg_log_probas: torch.Tensor  # scalar
    neg_avg_log_probas: torch.Tensor  # scalar: the cross entropy, by hand
    loss: torch.Tensor  # scalar: F.cross_entropy(logits_flat, targets_flat)
    stable_log_probas: torch.Tensor  # [N] log_softmax picked at the targets, never -inf
    surprisal: torch.Tensor  # [B, T] -log p(target) in nats, NaN where padded
    target_ranks: torch.Tensor  # [B, T] 1 = most likely token, 0 where padded
    topk_probas: torch.Tensor  # [B, T, k]
    topk_ids: torch.Tensor  # [B, T, k]

    @property
    def difference(self) -> float:
        """Manual minus built-in loss: float32 rounding only (or inf after underflow)."""
        return float(self.neg_avg_log_probas) - float(self.loss)

    @property
    def perplexity(self) -> float:
        return perplexity(float(self.loss))

    @property
    def logits_flat(self) -> torch.Tensor:
        return self.logits.flatten(0, 1)

    @property
    def targets_flat(self) -> torch.Tensor:
        return self.batch.targets.flatten()

    @property
    def num_tokens(self) -> int:
        return int(self.batch.mask.sum())


def validate_options(top_k: int, temperature: float, vocab_size: int) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= vocab_size:
        raise InvalidParameterError(f"top-k must be a whole number from 1 to {vocab_size}, got {top_k!r}")
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"temperature must be a number > 0, got {temperature!r}") from None
    if not math.isfinite(t) or t <= 0:
        raise InvalidParameterError(f"temperature must be a finite number > 0, got {temperature!r}")


def prepare_batch(
    texts: list[str],
    context_length: int,
    tokenizer: tiktoken.Encoding | None = None,
) -> Batch:
    """Tokenize, check and pad `texts`; raise a typed error naming the text at fault."""
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise EmptyTextError("Enter at least one text.")
    if len(texts) > MAX_TEXTS:
        raise InvalidParameterError(f"{len(texts)} texts: at most {MAX_TEXTS} fit in one batch.")
    tokenizer = tokenizer or get_tokenizer()
    token_ids = []
    for n, text in enumerate(texts, 1):
        if not isinstance(text, str):
            raise InvalidParameterError(f"Text {n} is {type(text).__name__}, not text: decode it first.")
        if not text.strip():
            raise EmptyTextError(f"Text {n} is empty: type a sentence of at least two tokens.")
        if len(text) > MAX_CHARS:
            raise ContextLengthError(
                f"Text {n} has {len(text):,} characters; at most {MAX_CHARS:,} are accepted "
                f"(and the model reads at most {context_length} tokens)."
            )
        ids = encode(text, tokenizer)
        if len(ids) < 2:
            raise TooFewTokensError(
                f"Text {n} is a single token ({text.strip()!r}): the loss needs at least two "
                "tokens, one to read and the next to predict."
            )
        if len(ids) > context_length + 1:
            raise ContextLengthError(
                f"Text {n} has {len(ids)} tokens; this model reads at most {context_length} "
                f"tokens, so a text can have at most {context_length + 1} (each token predicts "
                "the next). Shorten it."
            )
        token_ids.append(ids)
    width = max(len(ids) for ids in token_ids) - 1
    if width * len(token_ids) > MAX_POSITIONS:
        raise ContextLengthError(
            f"{len(token_ids)} texts x {width} positions = {width * len(token_ids)} predictions; "
            f"at most {MAX_POSITIONS} fit in one batch. Use fewer or shorter texts."
        )
    inputs = torch.full((len(token_ids), width), PAD_ID, dtype=torch.long)
    targets = torch.full((len(token_ids), width), IGNORE_INDEX, dtype=torch.long)
    for row, ids in enumerate(token_ids):
        inputs[row, : len(ids) - 1] = torch.tensor(ids[:-1])
        targets[row, : len(ids) - 1] = torch.tensor(ids[1:])
    return Batch(list(texts), token_ids, inputs, targets, targets != IGNORE_INDEX)


def loss_from_logits(
    logits: torch.Tensor,
    targets: torch.Tensor,
    top_k: int = 5,
    temperature: float = 1.0,
    batch: Batch | None = None,
) -> LossResult:
    """The six steps and the built-in loss on given logits [B, T, V] and targets [B, T]."""
    validate_options(top_k, temperature, logits.shape[-1])
    mask = targets != IGNORE_INDEX
    if not bool(mask.any()):
        raise TooFewTokensError("No target tokens: every position is padding.")
    # One copy into rows, if any: the model's out_head may hand over a transposed view (MKL's
    # path), and every step below reads whole rows (log_softmax would otherwise copy it again).
    logits = logits.float().contiguous()
    if float(temperature) != 1.0:
        logits = logits / float(temperature)
    safe_targets = targets.clamp(min=0).unsqueeze(-1)  # padding gathers token 0, then is masked out

    # Steps 1-2: logits -> probabilities over the whole vocabulary.
    probas = torch.softmax(logits, dim=-1)
    # Step 3: the probability each position gave to its actual next token.
    target_probas = probas.gather(-1, safe_targets).squeeze(-1)
    # Step 4: log probabilities, text after text (the book's torch.cat of each row).
    log_probas = torch.log(target_probas[mask])
    # Steps 5-6: average, then negate: the cross entropy.
    avg_log_probas = torch.mean(log_probas)
    neg_avg_log_probas = avg_log_probas * -1

    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)

    # The stable log-softmax: surprisal that stays finite where a probability underflows.
    stable = torch.log_softmax(logits, dim=-1).gather(-1, safe_targets).squeeze(-1)
    nan = torch.tensor(float("nan"), device=logits.device)
    surprisal = torch.where(mask, -stable, nan)
    # Rank over the full vocabulary: 1 + how many tokens the model preferred (compared on
    # the logits, where no rounding of the softmax can merge two tokens).
    target_logits = logits.gather(-1, safe_targets)
    # Summed into int32 as it is read: count_nonzero or a plain .sum() first widen the comparison
    # to int64, a copy (0.09 ms of the book example's 0.24 here).
    target_ranks = torch.where(mask, (logits > target_logits).sum(-1, dtype=torch.int32) + 1, 0)
    topk_probas, topk_ids = probas.topk(min(top_k, logits.shape[-1]), dim=-1)

    if batch is None:
        batch = Batch([], [], torch.empty(0), targets, mask)
    return LossResult(
        batch=batch,
        temperature=float(temperature),
        logits=logits,
        probas=probas,
        target_probas=torch.where(mask, target_probas, nan),
        log_probas=log_probas,
        avg_log_probas=avg_log_probas,
        neg_avg_log_probas=neg_avg_log_probas,
        loss=loss,
        stable_log_probas=stable[mask],
        surprisal=surprisal,
        target_ranks=target_ranks,
        topk_probas=topk_probas,
        topk_ids=topk_ids,
    )


def compute_loss(
    model: torch.nn.Module,
    texts: list[str],
    top_k: int = 5,
    temperature: float = 1.0,
    tokenizer: tiktoken.Encoding | None = None,
) -> LossResult:
    """Run `model` on `texts` and return every step of figure 5.7.

    Inference only: no gradients, no change to the (possibly shared) model.
    """
    validate_options(top_k, temperature, model.cfg["vocab_size"])
    batch = prepare_batch(texts, model.cfg["context_length"], tokenizer)
    if top_k * batch.inputs.numel() > MAX_TOPK_ENTRIES:
        raise InvalidParameterError(
            f"top-k {top_k} x {batch.inputs.numel()} positions = {top_k * batch.inputs.numel():,} listed "
            f"tokens; at most {MAX_TOPK_ENTRIES:,}. Lower top-k or use shorter texts."
        )
    if model.training:
        raise RuntimeError("compute_loss needs a model in eval mode (dropout off)")
    device = next(model.parameters()).device
    with torch.inference_mode():
        if device.type == "cpu":
            return loss_from_logits(model(batch.inputs), batch.targets, top_k, temperature, batch)
        # On a GPU: compute there, hand back CPU tensors (the report and the views read them).
        logits = model(batch.inputs.to(device))
        result = loss_from_logits(logits, batch.targets.to(device), top_k, temperature, batch)
        return replace(
            result,
            **{
                f.name: getattr(result, f.name).cpu()
                for f in fields(result)
                if isinstance(getattr(result, f.name), torch.Tensor)
            },
        )
