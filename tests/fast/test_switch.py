"""The plug-in is optional: LOSSLENS_FAST=0 serves the book's own modules with the book's numbers,
and the app runs with core.fast not importable at all; serving's build pauses need no call in the
book's classes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.book import model as book
from core.book.model import GPT_CONFIG_124M, GPTModel
from core.fast import is_accelerated
from core.serving import frozen, priority

ROOT = Path(__file__).resolve().parents[2]
TINY = {**GPT_CONFIG_124M, "emb_dim": 64, "n_heads": 4, "n_layers": 2, "vocab_size": 500}


def test_switched_off_the_served_model_is_the_book_s_with_one_mask(monkeypatch):
    monkeypatch.setenv(frozen.FAST_ENV, "0")
    torch.manual_seed(1)
    model = frozen.freeze(GPTModel(TINY))
    assert not is_accelerated(model) and not model.training
    assert {type(m) for m in model.modules()} >= {
        book.TransformerBlock,
        book.MultiHeadAttention,
        torch.nn.Linear,
    }
    masks = {id(b.att.mask) for b in model.trf_blocks}
    assert len(masks) == 1  # one tensor for every block
    monkeypatch.setenv(frozen.FAST_ENV, "1")
    torch.manual_seed(1)
    fast = frozen.freeze(GPTModel(TINY))
    assert is_accelerated(fast)
    x = torch.randint(0, 500, (2, 9))
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)


def test_a_build_pauses_at_every_module_registered_on_its_thread(monkeypatch):
    calls = []
    monkeypatch.setattr(frozen, "pause_point", lambda: calls.append(1))
    with frozen.building():
        GPTModel({**TINY, "n_layers": 1})
    assert len(calls) > 10  # the block's parts and the model's, no call in the book's classes
    calls.clear()
    GPTModel({**TINY, "n_layers": 1})
    assert calls == []  # the hook is gone after the build
    assert "pause_point" not in open(book.__file__, encoding="utf-8").read()
    assert priority.pause_point is not None


@pytest.mark.slow
def test_the_book_number_tests_pass_without_the_plug_in():
    """tests/book/test_model.py and tests/lessons/test_loss.py with LOSSLENS_FAST=0 and core.fast
    not importable: what deleting the plug-in folder would leave."""
    code = (
        "import sys; sys.modules['core.fast'] = None; import pytest; "
        "sys.exit(pytest.main(['-q', '-x', '-n', '0', '-p', 'no:cacheprovider', "
        "'tests/book/test_model.py', 'tests/lessons/test_loss.py']))"
    )
    env = {**os.environ, frozen.FAST_ENV: "0"}
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout
