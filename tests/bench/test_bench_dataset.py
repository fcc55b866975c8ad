"""bench/bench_dataset.py's FLOP counts and its split of the pass into linear layers and the rest."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import bench_dataset
import bench_layers

import core.lessons.dataset
from core import build_untrained_model
from core.book.model import GPT_CONFIG_124M
from core.fast import onednn, panel
from core.fast.blocks import FastAttention
from core.fast.linear import PackedLinear as CpuLinear
from core.fast.linear import PackedWeight

SMALL = {**GPT_CONFIG_124M, "vocab_size": 1000, "context_length": 64, "emb_dim": 64, "n_heads": 4}
SMALL["n_layers"] = 2


def test_linear_flops_are_the_model_s_own_linear_layers():
    model = build_untrained_model(123, SMALL)
    per_token = sum(2 * m.in_features * m.out_features for m in model.modules() if isinstance(m, CpuLinear))
    batches = [(2, 16), (1, 5)]
    assert bench_dataset.linear_flops(SMALL, batches) == per_token * (2 * 16 + 5)
    # The attention products on top: QK^T and AV, T x T x d each, per layer
    attention = 2 * 2 * 2 * (2 * 16 * 16 + 5 * 5) * 64
    assert bench_dataset.matmul_flops(SMALL, batches) == per_token * 37 + attention


def test_timed_parts_times_every_linear_attention_and_loss_call_and_restores_them():
    from core.lessons.dataset import batch_loss as calc_loss_batch

    model = build_untrained_model(123, SMALL)
    x = torch.randint(0, SMALL["vocab_size"], (2, 40))  # 80 rows: the cross entropy in blocks
    hidden = torch.zeros(2, 40, SMALL["emb_dim"])

    def timed_places():
        return (
            panel.linear,
            onednn.linear,
            FastAttention.attend,
            core.lessons.dataset.cross_entropy,
        )

    originals = timed_places()
    if model.out_head.on_panels(hidden):  # per block: query/key/value joined, out_proj, feed-forward
        calls = ours = SMALL["n_layers"] * 4 + 1
    elif model.out_head.weight.is_mkldnn:  # the three projections apart
        calls, ours = SMALL["n_layers"] * 6 + 1, 0
    else:
        pytest.skip("the model's layers run neither LossLens's kernel nor oneDNN on this machine")
    with torch.inference_mode():
        expected = calc_loss_batch(x, x, model, "cpu")
        with bench_dataset.timed_parts() as parts:
            got = calc_loss_batch(x, x, model, "cpu")
        counted = {name: (p.calls, p.ours) for name, p in parts.items()}
        assert counted == {"linear": (calls, ours), "attention": (2, 0), "cross entropy": (1, 0)}
        assert all(p.seconds > 0 for p in parts.values())
        calc_loss_batch(x, x, model, "cpu")
    assert {name: (p.calls, p.ours) for name, p in parts.items()} == counted  # counted only inside
    assert timed_places() == originals
    assert torch.equal(got, expected)  # timing changes nothing
    if ours:  # each kernel call by layer, and the layer's last call to run again alone
        layers = {bench_dataset.layer_name(key, SMALL): len(s) for key, s in parts["linear"].layers.items()}
        assert layers == {
            "query/key/value": 2,
            "out_proj": 2,
            "feed-forward 1": 2,
            "feed-forward 2": 2,
            "out_head": 1,
        }
        # bench_layers.back_to_back's batch: the forward pass's kernel calls, in their number
        assert Counter(name for name, *_ in bench_layers.batch_layers(SMALL)) == layers
        assert parts["linear"].last.keys() == parts["linear"].layers.keys()
        by_itself = bench_dataset.alone(parts, reps=1)
        assert by_itself.keys() == parts["linear"].layers.keys() and all(t > 0 for t in by_itself.values())
        with torch.inference_mode():
            assert torch.equal(
                calc_loss_batch(x, x, model, "cpu"), expected
            )  # running them again changed nothing


def test_layer_names_are_bench_layers_own_and_an_unknown_shape_is_spelt_out():
    d, v = GPT_CONFIG_124M["emb_dim"], GPT_CONFIG_124M["vocab_size"]
    assert bench_dataset.layer_name((3 * d, d, False, False)) == "query/key/value"
    assert bench_dataset.layer_name((4 * d, d, True, False)) == "feed-forward 1"
    assert bench_dataset.layer_name((d, 4 * d, False, True)) == "feed-forward 2"
    assert bench_dataset.layer_name((v, d, False, False)) == "out_head"
    assert bench_dataset.layer_name((d, d, False, False)) == "768 x 768"  # out_proj without its shortcut
    assert bench_dataset.layer_name((4 * d, d, False, False)) == "3072 x 768"


@pytest.mark.slow
def test_the_timed_pass_runs_the_model_as_the_app_holds_it():
    """The bench times the app's model: a CPU model keeps the weights the plug-in packed (a .to("cpu")
    that unpacked them once had the bench time oneDNN on plain weights, 1.2x slower than the app)."""
    model = bench_dataset.our_model("cpu")
    layers = [m for m in model.modules() if isinstance(m, CpuLinear)]
    if not (onednn.AVAILABLE or panel.selected()):
        pytest.skip("nothing to pack for on this machine")
    assert all(isinstance(m.weight, PackedWeight) for m in layers)
    assert model.out_head.on_panels(torch.zeros(2, 256, GPT_CONFIG_124M["emb_dim"])) == panel.selected()
