"""bench/bench_layers.py: the layers it times are the model's, and it compares like with like."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import bench_layers

from core.book.model import GPT_CONFIG_124M, GPTModel
from core.fast import panel

SMALL = {**GPT_CONFIG_124M, "vocab_size": 1000, "emb_dim": 64, "n_heads": 4, "n_layers": 1}


def test_the_layers_timed_are_the_model_s_own():
    model = GPTModel(SMALL)
    shapes = {(m.out_features, m.in_features) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    timed = {
        (n // 3, k) if name == "query/key/value" else (n, k)
        for name, n, k, _ in bench_layers.layer_shapes(SMALL)
    }
    assert timed == shapes  # the query, key and value layers are timed as one joined call
    assert [then for *_, then in bench_layers.layer_shapes(SMALL)] == ["", "add", "gelu", "add", ""]


@pytest.mark.skipif(panel.library() is None, reason=f"LossLens's kernel: {panel.reason}")
@pytest.mark.parametrize("then", ["", "add", "gelu"])
def test_each_layer_is_timed_with_torch_s_same_result(then):
    t_ours, t_torch, gap = bench_layers.time_layer(rows=20, n=48, k=32, then=then, reps=1)
    assert t_ours > 0 and t_torch > 0
    assert gap < 1e-4  # the kernel and torch computed the same layer (the GELU or the shortcut too)
    with torch.inference_mode():
        assert bench_layers.time_layer(rows=3, n=16, k=8, then=then, reps=1, reuse=True)[2] < 1e-5


def test_a_batch_s_layers_run_in_the_forward_pass_s_order():
    layers = [name for name, *_ in bench_layers.batch_layers({**SMALL, "n_layers": 2})]
    block = ["query/key/value", "out_proj", "feed-forward 1", "feed-forward 2"]
    assert layers == block + block + ["out_head"]


@pytest.mark.skipif(panel.library() is None, reason=f"LossLens's kernel: {panel.reason}")
def test_the_layers_back_to_back_give_each_kernel_s_share_of_the_peak(monkeypatch):
    calls = []
    real_linear, real_addmm = panel.linear, torch.addmm
    monkeypatch.setattr(panel, "linear", lambda *a, **kw: calls.append("ours") or real_linear(*a, **kw))
    monkeypatch.setattr(torch, "addmm", lambda *a, **kw: calls.append("torch") or real_addmm(*a, **kw))
    monkeypatch.setattr(bench_layers, "matmul_peak", lambda runs: 1.0)  # 1 GFLOPS: shares are GFLOPS
    ours, theirs = bench_layers.back_to_back(SMALL, rows=8, rounds=3)
    layers = len(bench_layers.batch_layers(SMALL))
    assert calls.count("ours") == calls.count("torch") == 4 * layers  # a warm-up round, then 3
    work = sum(2 * 8 * n * k for _, n, k, _ in bench_layers.batch_layers(SMALL))
    assert 0 < ours < 1e6 and 0 < theirs < 1e6
    assert work / 1e9 / 10 < ours  # the SMALL layers take well under 10 s: GFLOPS of a real timing
