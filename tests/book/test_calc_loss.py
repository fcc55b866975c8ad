"""Section 5.1.3's loss functions in core.book equal the book's own (llms_from_scratch.ch05)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from core.book.loss import calc_loss_batch, calc_loss_loader
from core.book.model import GPT_CONFIG_124M, GPTModel
from core.models.loaders import create_loader

TINY = {**GPT_CONFIG_124M, "context_length": 32, "emb_dim": 16, "n_heads": 2, "n_layers": 1}


@pytest.fixture(scope="module")
def verdict(verdict_path) -> str:
    return verdict_path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(7)
    return GPTModel(TINY).eval()


def test_calc_loss_batch_equals_the_books(tiny_model, verdict):
    ch05 = pytest.importorskip(
        "llms_from_scratch.ch05",
        reason="reference code absent: pip install --no-deps llms-from-scratch==1.0.19 (as .ci/run does)",
    )

    loader = create_loader(verdict, None, 3, 32, 32, shuffle=False)
    x, y = next(iter(loader))
    with torch.no_grad():
        ours = calc_loss_batch(x, y, tiny_model, "cpu")
        book = ch05.calc_loss_batch(x, y, tiny_model, "cpu")  # model(x) + F.cross_entropy
        logits = tiny_model(x)
    assert torch.equal(ours, book)
    assert ours.item() == pytest.approx(
        F.cross_entropy(logits.flatten(0, 1).double(), y.flatten()).item(), abs=1e-5
    )


def test_calc_loss_batch_keeps_gradients():
    torch.manual_seed(1)
    model = GPTModel(TINY)  # trainable: the book's training loop calls calc_loss_batch too
    x = torch.randint(0, 50257, (2, 8))
    loss = calc_loss_batch(x, torch.roll(x, -1, 1), model, "cpu")
    loss.backward()
    assert model.out_head.weight.grad is not None and model.tok_emb.weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_calc_loss_loader_equals_the_books(tiny_model, verdict):
    ch05 = pytest.importorskip(
        "llms_from_scratch.ch05",
        reason="reference code absent: pip install --no-deps llms-from-scratch==1.0.19 (as .ci/run does)",
    )

    loader = create_loader(verdict[:3000], None, 2, 32, 32, shuffle=False)
    assert len(loader) > 5
    for n in (None, 1, 3, 10_000):
        with torch.no_grad():
            ours = calc_loss_loader(loader, tiny_model, "cpu", num_batches=n)
            book = ch05.calc_loss_loader(loader, tiny_model, "cpu", num_batches=n)
        assert ours == book, n


def test_empty_loader_is_nan_like_the_book(tiny_model):
    loader = create_loader("Too short.", None, 2, 32, 32)
    assert len(loader) == 0
    assert math.isnan(calc_loss_loader(loader, tiny_model, "cpu"))
