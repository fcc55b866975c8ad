"""Section 5.1.3's pass over a data set: the book's printed training and validation losses, the
book's calc_loss_loader semantics, progress, cancel and the no-batch cases."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from core.book.model import GPT_CONFIG_124M, GPTModel
from core.errors import InvalidParameterError, NoBatchesError
from core.lessons.dataset import LOG_SOFTMAX_ROWS, cross_entropy, evaluate_dataset
from core.models.loaders import LoaderSettings, make_loaders
from core.serving.frozen import freeze

# Its module fixtures are built once: under pytest-xdist the module runs in one worker.
pytestmark = pytest.mark.xdist_group("book-run")

# Printed by the book's ch05 notebook for the untrained seed-123 model on The Verdict,
# and reproduced to every printed digit by the book's code (llms_from_scratch) here.
BOOK_TRAIN_LOSS = 10.98758347829183
BOOK_VAL_LOSS = 10.98110580444336

TINY = {**GPT_CONFIG_124M, "context_length": 32, "emb_dim": 16, "n_heads": 2, "n_layers": 1}


@pytest.fixture(scope="module")
def verdict(verdict_path) -> str:
    return verdict_path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(7)
    return freeze(GPTModel(TINY))


@pytest.fixture(scope="module")
def book_run(model, verdict):
    """The full pass of section 5.1.3 with the book's settings (the one slow computation)."""
    calls = []
    result = evaluate_dataset(model, verdict, LoaderSettings(), progress=lambda *a: calls.append(a))
    return result, calls


# --- the book's numbers ----------------------------------------------------------


@pytest.mark.slow
def test_book_losses(book_run):
    result, _ = book_run
    assert result.train_loss == pytest.approx(BOOK_TRAIN_LOSS, abs=1e-6)
    assert result.val_loss == pytest.approx(BOOK_VAL_LOSS, abs=1e-6)
    assert result.train_perplexity == pytest.approx(math.exp(BOOK_TRAIN_LOSS), rel=1e-5)
    assert result.val_perplexity == pytest.approx(math.exp(BOOK_VAL_LOSS), rel=1e-5)
    assert not result.cancelled and result.warnings == []
    # The loader loss is the mean of the per-batch losses (the chart's data).
    assert len(result.train_batch_losses) == 9 and len(result.val_batch_losses) == 1
    assert result.train_loss == pytest.approx(sum(result.train_batch_losses) / 9, abs=1e-12)
    assert result.val_loss == result.val_batch_losses[0]
    # Untrained: every batch is near ln(50257) = 10.825, and they are not all equal.
    assert all(10.8 < x < 11.1 for x in result.train_batch_losses)
    assert len(set(result.train_batch_losses)) == 9
    d = result.to_dict()
    assert (d["characters"], d["tokens"], d["train_tokens"], d["val_tokens"]) == (20479, 5145, 4608, 512)
    assert d["train_loss"] == result.train_loss and d["val_perplexity"] == result.val_perplexity
    # Small and picklable, so a UI can cache it.
    assert result.data.train_loader is None
    assert pickle.loads(pickle.dumps(result)).to_dict() == d


@pytest.mark.slow
def test_progress_counts_both_splits(book_run):
    _, calls = book_run
    assert calls == [(0, 10, "train")] + [(i, 10, "train") for i in range(1, 10)] + [(10, 10, "val")]


@pytest.mark.slow
def test_num_batches_takes_the_first_batches(model, verdict, book_run):
    full, _ = book_run
    calls = []
    result = evaluate_dataset(model, verdict, num_batches=1, progress=lambda *a: calls.append(a))
    assert result.num_batches == 1
    assert result.train_batch_losses == pytest.approx(full.train_batch_losses[:1], abs=1e-6)
    assert result.train_loss == result.train_batch_losses[0]
    assert result.val_loss == pytest.approx(full.val_loss, abs=1e-6)
    assert calls == [(0, 2, "train"), (1, 2, "train"), (2, 2, "val")]


# --- evaluate_dataset ------------------------------------------------------------


def test_cancel_returns_what_was_done(tiny_model, verdict):
    settings = LoaderSettings(context_length=32, stride=32)
    done = []
    result = evaluate_dataset(
        tiny_model,
        verdict[:4000],
        settings,
        progress=lambda *a: done.append(a),
        cancel=lambda: len(done) >= 3,
    )
    assert result.cancelled
    assert len(result.train_batch_losses) == 2  # progress(0), batch 1, batch 2, then stop
    assert result.train_loss is None and result.val_loss is None and result.val_batch_losses == []
    assert result.train_perplexity is None
    # Stopping half-way leaves this thread's grad mode as it was.
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


@pytest.mark.slow
def test_cancel_during_validation_keeps_the_training_loss(tiny_model, verdict):
    settings = LoaderSettings(context_length=32, stride=32, batch_size=1)  # two validation batches
    text = verdict[:4000]
    n_train = make_loaders(text, settings).train.batches
    done = []
    result = evaluate_dataset(
        tiny_model,
        text,
        settings,
        progress=lambda *a: done.append(a),
        cancel=lambda: done[-1][2] == "val",
    )
    assert result.cancelled and len(result.train_batch_losses) == n_train
    assert result.train_loss == pytest.approx(sum(result.train_batch_losses) / n_train)
    assert result.val_loss is None and len(result.val_batch_losses) == 1


@pytest.mark.slow
def test_small_settings_match_the_books_function(tiny_model, verdict):
    ch05 = pytest.importorskip(
        "llms_from_scratch.ch05",
        reason="reference code absent: pip install --no-deps llms-from-scratch==1.0.19 (as .ci/run does)",
    )

    settings = LoaderSettings(train_ratio=0.8, context_length=32, stride=16, batch_size=3, seed=5)
    text = verdict[:4000]
    result = evaluate_dataset(tiny_model, text, settings)
    data = make_loaders(text, settings)
    with torch.no_grad():
        assert result.train_loss == pytest.approx(
            ch05.calc_loss_loader(data.train_loader, tiny_model, "cpu"), abs=1e-6
        )
        assert result.val_loss == pytest.approx(
            ch05.calc_loss_loader(data.val_loader, tiny_model, "cpu"), abs=1e-6
        )
    assert result.data.train.batches == len(result.train_batch_losses)


def test_short_validation_split_raises_no_batches(tiny_model, verdict):
    with pytest.raises(NoBatchesError, match=r"validation split has no batch.*needs at least 33 tokens"):
        evaluate_dataset(tiny_model, verdict[:1000], LoaderSettings(context_length=32, stride=32))


def test_short_training_split_raises_no_batches(tiny_model):
    with pytest.raises(NoBatchesError, match=r"training split has no batch.*Use a longer text"):
        evaluate_dataset(tiny_model, "Just a few words here, not enough.", LoaderSettings(context_length=32))


def test_bad_inputs(tiny_model, verdict):
    with pytest.raises(InvalidParameterError, match="longer than the model's 32"):
        evaluate_dataset(tiny_model, verdict, LoaderSettings())
    with pytest.raises(InvalidParameterError, match="number of batches"):
        evaluate_dataset(tiny_model, verdict, LoaderSettings(context_length=32), num_batches=0)
    from core.errors import CorpusError

    with pytest.raises(CorpusError, match="empty"):
        evaluate_dataset(tiny_model, "  \n", LoaderSettings(context_length=32))


def test_needs_eval_mode_and_leaves_the_model_alone(verdict):
    torch.manual_seed(3)
    model = GPTModel(TINY)
    with pytest.raises(RuntimeError, match="eval mode"):
        evaluate_dataset(model, verdict, LoaderSettings(context_length=32))
    freeze(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    evaluate_dataset(model, verdict, LoaderSettings(context_length=32), num_batches=2)
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("rows", [LOG_SOFTMAX_ROWS, LOG_SOFTMAX_ROWS + 1, 7 * LOG_SOFTMAX_ROWS + 5])
@pytest.mark.parametrize("padded", [False, True])
def test_cross_entropy_is_f_cross_entropy_bit_for_bit_in_blocks_of_rows(monkeypatch, rows, padded):
    torch.manual_seed(rows)
    logits = torch.randn(rows, 3000) * 4
    targets = torch.randint(0, 3000, (rows,))
    if padded:
        targets[::3] = -100  # ignored, as F.cross_entropy's default ignore_index
    want = F.cross_entropy(logits, targets)
    shapes = []
    real = F.log_softmax
    monkeypatch.setattr(F, "log_softmax", lambda x, dim: shapes.append(tuple(x.shape)) or real(x, dim=dim))
    with torch.inference_mode():
        got = cross_entropy(logits, targets)
    assert torch.equal(got, want)  # the same summation over the same per-row values
    if rows <= LOG_SOFTMAX_ROWS:  # one block: F.cross_entropy itself
        assert shapes == []
    else:  # the log-softmax never sees the whole [tokens, vocab] block, and sees every row once
        assert max(s[0] for s in shapes) == LOG_SOFTMAX_ROWS and sum(s[0] for s in shapes) == rows


def test_cross_entropy_with_gradients_is_f_cross_entropy_itself():
    logits = torch.randn(100, 50, requires_grad=True)
    targets = torch.randint(0, 50, (100,))
    loss = cross_entropy(logits, targets)
    loss.backward()
    assert loss.grad_fn is not None and logits.grad.shape == logits.shape
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets), rtol=0, atol=0)
