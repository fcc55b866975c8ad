"""LossLens's training loop (section 5.2) on a tiny configuration: the book's numbers and log, and a stop."""

from __future__ import annotations

import math

import pytest
import torch

from core.book.model import GPTModel
from core.book.train import train_model_simple
from core.models.loaders import LoaderSettings
from core.models.presets import Preset
from core.models.training import TrainState, make_train_loaders, train_model

TINY_CFG = {
    "vocab_size": 50257,
    "context_length": 32,
    "emb_dim": 32,
    "n_heads": 2,
    "n_layers": 2,
    "drop_rate": 0.1,
    "qkv_bias": False,
}
TINY = Preset(
    name="tiny",
    description="test configuration",
    cfg=TINY_CFG,
    settings=LoaderSettings(train_ratio=0.9, context_length=32, stride=32, batch_size=4, seed=123),
    num_epochs=2,
    lr=0.004,
    eval_freq=2,
    eval_iter=2,
)


@pytest.fixture(scope="module")
def text(verdict_path):
    return verdict_path.read_text(encoding="utf-8")[:6000]


def _fresh(preset=TINY):
    torch.manual_seed(preset.seed)
    model = GPTModel(preset.cfg)
    return model, torch.optim.AdamW(model.parameters(), lr=preset.lr, weight_decay=preset.weight_decay)


@pytest.mark.slow
def test_a_few_steps_lower_the_loss(text, tokenizer):
    train_loader, val_loader = make_train_loaders(text, TINY.settings, tokenizer)
    model, optimizer = _fresh()
    lines = []
    train_losses, val_losses, tokens = train_model(
        model,
        train_loader,
        val_loader,
        optimizer,
        "cpu",
        2,
        2,
        2,
        "Every effort moves you",
        tokenizer,
        log=lines.append,
    )
    assert len(train_losses) == len(val_losses) == len(tokens) >= 4
    assert train_losses[0] > math.log(50257) - 0.5  # untrained: about uniform over the vocabulary
    assert train_losses[-1] < train_losses[0] - 1.0 and val_losses[-1] < val_losses[0] - 0.5
    assert tokens == sorted(tokens) and tokens[0] == 4 * 32  # one batch of 4 x 32 tokens at step 0
    assert lines[0].startswith("Ep 1 (Step 000000): Train loss ") and ", Val loss " in lines[0]
    assert sum(line.startswith("Every effort moves you") for line in lines) == 2  # a sample per epoch


@pytest.mark.slow
def test_same_log_as_the_books_reference_code(text, tokenizer, capsys):
    """The book's train_model_simple (llms_from_scratch's and core.book's) on the same model, loaders and
    seed gives train_model's numbers, and its log."""
    ch05 = pytest.importorskip("llms_from_scratch.ch05")
    train_loader, val_loader = make_train_loaders(text, TINY.settings, tokenizer)
    model, optimizer = _fresh()
    lines = []
    ours = train_model(
        model,
        train_loader,
        val_loader,
        optimizer,
        "cpu",
        1,
        2,
        2,
        "Every effort moves you",
        tokenizer,
        log=lines.append,
    )
    for train in (ch05.train_model_simple, train_model_simple):
        model, optimizer = _fresh()
        book = train(
            model, train_loader, val_loader, optimizer, "cpu", 1, 2, 2, "Every effort moves you", tokenizer
        )
        assert book == ours
        assert capsys.readouterr().out.splitlines() == lines


@pytest.mark.slow
def test_should_stop_ends_after_the_current_step(text, tokenizer):
    train_loader, val_loader = make_train_loaders(text, TINY.settings, tokenizer)
    model, optimizer = _fresh()
    state = TrainState()
    train_model(
        model,
        train_loader,
        val_loader,
        optimizer,
        "cpu",
        5,
        2,
        2,
        "Every",
        tokenizer,
        state=state,
        should_stop=lambda: state.global_step >= 2,
        log=None,
    )
    assert state.stopped and state.global_step == 2 and state.epoch == 0 and state.batch == 3
    assert state.tokens_seen == 3 * 4 * 32 and state.eval_steps == [0, 2]
