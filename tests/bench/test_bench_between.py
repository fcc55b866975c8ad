"""bench/bench_between.py: its variants are the model's own forward pass, each with the same logits,
and they leave the model's settings as they found them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import bench_between

from core.book.model import GPT_CONFIG_124M, GPTModel
from core.fast import blocks, panel
from core.fast.blocks import FastBlock
from core.serving.frozen import freeze

SMALL = {**GPT_CONFIG_124M, "vocab_size": 500, "emb_dim": 64, "n_heads": 4, "n_layers": 2}


@pytest.mark.slow
@pytest.mark.skipif(panel.library() is None, reason=f"LossLens's kernel: {panel.reason}")
def test_each_variant_is_timed_on_the_model_with_the_same_logits(monkeypatch):
    monkeypatch.setattr(panel, "selected", lambda: True)
    torch.manual_seed(3)
    model = freeze(GPTModel(SMALL))
    forward, limit = FastBlock.forward, blocks.ONE_THREAD_ATTENTION
    calls = []
    real = panel.linear
    monkeypatch.setattr(panel, "linear", lambda *a, **kw: calls.append(a[3]) or real(*a, **kw))
    times = bench_between.measure(model, runs=2, inputs={"two": [[1, 2, 3], [4, 5, 6]]})
    labels = ["LossLens", "layers asked every call", "attention on every thread", "both undone"]
    assert list(times["two"]) == [*labels, "kernel calls alone"]
    assert all(len(ts) == 2 and min(ts) > 0 for ts in times["two"].values())
    # The 4 variants' logits, then 2 rounds of all 5: each 4 kernel calls per block, then the out_head
    assert calls == ([3 * 64, 64, 4 * 64, 64] * 2 + [500]) * (4 + 2 * 5)
    assert FastBlock.forward is forward and blocks.ONE_THREAD_ATTENTION == limit

    forward = bench_between.variants(model)["both undone"]
    with torch.inference_mode():
        assert torch.equal(forward(torch.tensor([[7, 8]])), model(torch.tensor([[7, 8]])))
