"""Sections 4.7 and 5.1-5.2: the book's generation, token helpers and training loop in core.book equal
the book's own code (llms_from_scratch) step for step on a tiny model."""

from __future__ import annotations

import pytest
import torch

from core.book.data import create_dataloader_v1
from core.book.model import GPTModel
from core.book.train import (
    evaluate_model,
    generate_and_print_sample,
    generate_text_simple,
    text_to_token_ids,
    token_ids_to_text,
    train_model_simple,
)
from core.runtime.tokenizer_files import seed_tiktoken_cache

TINY_CFG = {
    "vocab_size": 50257,
    "context_length": 32,
    "emb_dim": 32,
    "n_heads": 2,
    "n_layers": 2,
    "drop_rate": 0.1,
    "qkv_bias": False,
}


@pytest.fixture(scope="module")
def ch05():
    return pytest.importorskip(
        "llms_from_scratch.ch05",
        reason="reference code absent: pip install --no-deps llms-from-scratch==1.0.19 (as .ci/run does)",
    )


@pytest.fixture(scope="module")
def loaders(verdict_path, tmp_path_factory):
    """The book's create_dataloader_v1 on a slice of The Verdict, tiktoken served offline."""
    text = verdict_path.read_text(encoding="utf-8")[:3000]
    split = int(0.9 * len(text))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(seed_tiktoken_cache(tmp_path_factory.mktemp("tiktoken"))))
        train = create_dataloader_v1(text[:split], batch_size=4, max_length=32, stride=32, drop_last=True)
        val = create_dataloader_v1(
            text[split:], batch_size=4, max_length=32, stride=32, shuffle=False, drop_last=False
        )
    return train, val


def _fresh():
    torch.manual_seed(123)
    model = GPTModel(TINY_CFG)
    return model, torch.optim.AdamW(model.parameters(), lr=0.004, weight_decay=0.1)


def test_text_and_token_ids_round_trip_as_the_books(ch05, tokenizer):
    ids = text_to_token_ids("Every effort moves you<|endoftext|>", tokenizer)
    assert ids.tolist() == [[6109, 3626, 6100, 345, 50256]]
    assert torch.equal(ids, ch05.text_to_token_ids("Every effort moves you<|endoftext|>", tokenizer))
    assert token_ids_to_text(ids, tokenizer) == ch05.token_ids_to_text(ids, tokenizer)
    assert token_ids_to_text(ids, tokenizer) == "Every effort moves you<|endoftext|>"


def test_generate_text_simple_is_greedy_and_matches_the_book(ch05, tokenizer):
    ch04 = pytest.importorskip("llms_from_scratch.ch04")
    model, _ = _fresh()
    model.eval()
    idx = text_to_token_ids("Hello, I am", tokenizer)
    out = generate_text_simple(model, idx, 6, 32)
    assert torch.equal(out, generate_text_simple(model, idx, 6, 32))
    assert torch.equal(out, ch04.generate_text_simple(model, idx, 6, 32))
    with torch.no_grad():
        assert out[0, 4].item() == model(idx)[0, -1].argmax().item()


@pytest.mark.slow
def test_train_model_simple_equals_the_books(ch05, loaders, tokenizer, capsys):
    """Same model, loaders and seed: the same losses to the bit, the same log and samples."""
    train_loader, val_loader = loaders
    runs, logs = [], []
    for train in (ch05.train_model_simple, train_model_simple):
        model, optimizer = _fresh()
        runs.append(
            train(
                model,
                train_loader,
                val_loader,
                optimizer,
                "cpu",
                1,
                1,
                1,
                "Every effort moves you",
                tokenizer,
            )
        )
        logs.append(capsys.readouterr().out)
    assert runs[0] == runs[1]
    train_losses, val_losses, tokens_seen = runs[1]
    assert len(train_losses) == len(val_losses) == len(tokens_seen) == len(train_loader) >= 4
    assert train_losses[-1] < train_losses[0]  # it learns
    assert tokens_seen == [4 * 32 * step for step in range(1, len(train_loader) + 1)]
    assert logs[0] == logs[1]
    lines = logs[1].splitlines()
    assert lines[0].startswith("Ep 1 (Step 000000): Train loss ")
    assert lines[-1].startswith("Every effort moves you")  # the epoch's sample


@pytest.mark.slow
def test_evaluate_model_and_the_sample_equal_the_books(ch05, loaders, tokenizer, capsys):
    model, _ = _fresh()
    train_loader, val_loader = loaders
    torch.manual_seed(7)  # the pass over the shuffled train_loader draws its order
    ours = evaluate_model(model, train_loader, val_loader, "cpu", 2)
    assert model.training  # the book leaves it in training mode
    torch.manual_seed(7)
    assert ours == ch05.evaluate_model(model, train_loader, val_loader, "cpu", 2)
    generate_and_print_sample(model, tokenizer, "cpu", "Every effort")
    ch05.generate_and_print_sample(model, tokenizer, "cpu", "Every effort")
    ours, book = capsys.readouterr().out.splitlines()
    assert ours == book and ours.startswith("Every effort")
