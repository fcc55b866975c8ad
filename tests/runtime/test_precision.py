"""The bfloat16 fast mode: offered only where it is native, and every result says how far it
moved the loss from float32 on the same data."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest
import torch

from core.book.model import GPT_CONFIG_124M, GPTModel
from core.lessons.dataset import evaluate_dataset
from core.models.loaders import LoaderSettings
from core.runtime.precision import CPU_BF16_FLAGS, FORCE_ENV, autocast, bf16_unavailable, cpu_flags
from core.serving.frozen import freeze

TINY = {**GPT_CONFIG_124M, "context_length": 32, "emb_dim": 64, "n_heads": 2, "n_layers": 2}
SETTINGS = LoaderSettings(context_length=32, stride=32, batch_size=2)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(7)
    return freeze(GPTModel(TINY))


def test_offered_on_the_cpu_only_where_bfloat16_is_native(monkeypatch):
    monkeypatch.delenv(FORCE_ENV, raising=False)
    flags = cpu_flags()
    if sys.platform.startswith("linux") and platform.machine() == "x86_64":
        assert "sse2" in flags  # the flags were read
    native = bool(flags & set(CPU_BF16_FLAGS))
    reason = bf16_unavailable("cpu")
    assert (reason is None) == native
    if not native:
        assert "no native bfloat16" in reason and "slower than float32" in reason
    assert "not on meta" in bf16_unavailable("meta")
    monkeypatch.setenv(FORCE_ENV, "1")  # asked for: offered anyway (slow where not native)
    assert bf16_unavailable("cpu") is None


def test_autocast_runs_matmuls_in_bfloat16_only_when_fast():
    x, w = torch.randn(3, 8), torch.randn(4, 8)
    with autocast("cpu", False):
        assert torch.nn.functional.linear(x, w).dtype == torch.float32
    with autocast("cpu", True):
        assert torch.nn.functional.linear(x, w).dtype == torch.bfloat16


@pytest.mark.slow
def test_fast_dataset_pass_says_how_far_it_is_from_float32(tiny_model, verdict_path):
    text = verdict_path.read_text(encoding="utf-8")[:6000]
    exact = evaluate_dataset(tiny_model, text, SETTINGS)
    fast = evaluate_dataset(tiny_model, text, SETTINGS, fast=True)
    assert exact.precision == "float32" and exact.bf16_differences is None
    assert fast.precision == "bfloat16"
    # The yardstick is float32 on the same first batches: the exact pass's own first losses.
    assert fast.float32_first_batch == {
        "train": exact.train_batch_losses[0],
        "val": exact.val_batch_losses[0],
    }
    d = fast.bf16_differences
    assert d == {
        "train": fast.train_batch_losses[0] - exact.train_batch_losses[0],
        "val": fast.val_batch_losses[0] - exact.val_batch_losses[0],
    }
    # bfloat16 did run (the losses moved), and moved them only a little.
    assert fast.train_batch_losses != exact.train_batch_losses
    assert all(0 < abs(v) < 0.05 for v in d.values())
    assert fast.train_loss == pytest.approx(exact.train_loss, abs=0.05)
    assert fast.val_loss == pytest.approx(exact.val_loss, abs=0.05)
    out = fast.to_dict()
    assert out["precision"] == "bfloat16" and out["bf16_differences"] == d
    assert exact.to_dict()["float32_first_batch"] is None


@pytest.mark.parametrize("tokens", [8, 150])  # few rows ((W x^T)^T) and many (F.linear)
def test_the_fast_mode_leaves_a_shared_frozen_model_packed(tokens):
    """A frozen model serves every visitor: one visitor's fast mode keeps a bfloat16 copy of each
    packed weight beside it, instead of unpacking the model for everybody's float32 requests. Its
    logits are the same bits as autocast on the plain weights."""
    import copy

    from core.fast.linear import PackedLinear as CpuLinear
    from core.fast.linear import PackedWeight

    torch.manual_seed(8)
    model = freeze(GPTModel({**TINY, "context_length": 160}))
    with pytest.MonkeyPatch.context() as mp:  # the plug-in's modules on plain float32 weights
        mp.setattr(CpuLinear, "pack", lambda self, *args, **kwargs: False)
        plain = freeze(copy.deepcopy(model))
    layers = [m for m in model.modules() if isinstance(m, CpuLinear)]
    x = torch.randint(0, TINY["vocab_size"], (2, tokens))
    with torch.inference_mode():
        before = model(x)
        with autocast("cpu", True):
            fast, want = model(x), plain(x)
        after = model(x)
    assert fast.dtype == torch.bfloat16 and torch.equal(fast, want)
    assert all(isinstance(m.weight, PackedWeight) for m in layers)  # still packed, for everybody
    assert torch.equal(after, before)  # float32 as before
    assert all(
        m._autocast_copy.dtype == torch.bfloat16 and not m._autocast_copy.is_inference() for m in layers
    )
    copied = copy.deepcopy(model)  # a copy (the gradient view's) leaves the bfloat16 copies behind
    assert all(
        getattr(m, "_autocast_copy", None) is None for m in copied.modules() if isinstance(m, CpuLinear)
    )


@pytest.mark.slow
def test_cli_dataset_fast(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(("Every effort moves you, said Gisburn, and so it did. " * 60), encoding="utf-8")
    cmd = [sys.executable, "-m", "core", "dataset", "--corpus", str(corpus), "--fast"]
    cmd += ["--context-length", "16", "--stride", "16", "--num-batches", "1"]
    json_run = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=600)
    assert json_run.returncode == 0, json_run.stderr
    out = json.loads(json_run.stdout)
    assert out["precision"] == "bfloat16" and set(out["bf16_differences"]) == {"train", "val"}
    assert out["bf16_differences"]["train"] == pytest.approx(
        out["train_batch_losses"][0] - out["float32_first_batch"]["train"], abs=1e-12
    )
    native = bf16_unavailable("cpu") is None
    assert ("no native bfloat16" in json_run.stderr) != native  # warned where it is slow
    text_run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert text_run.returncode == 0, text_run.stderr
    d = out["bf16_differences"]
    assert f"moved {d['train']:+.6f} (train) and {d['val']:+.6f} (val)" in text_run.stdout


# --- training in bfloat16 ----------------------------------------------------------------


@pytest.mark.slow
def test_fast_training_steps_in_bfloat16_and_records_how_far_on_the_same_batches(verdict_path):
    from dataclasses import replace

    from test_training import TINY

    from core.errors import InvalidParameterError
    from core.models.checkpoints import load_trained_model, saved_run
    from core.models.presets import preset_of
    from core.serving.runner import run_training

    text = verdict_path.read_text(encoding="utf-8")[:3000]  # 8 steps, 4 evaluations
    exact = run_training(TINY, text, "exact-f32", log=None)
    lines = []
    fast = run_training(replace(TINY, fast=True), text, "fast-bf16", log=lines.append)
    assert exact.state.bf16_gaps == [] and len(fast.state.bf16_gaps) == len(fast.state.train_losses) > 1
    gaps = [g for pair in fast.state.bf16_gaps for g in pair]
    # Small, and not nothing: on the same batches (on other batches they reach 0.1 and more).
    assert all(abs(g) < 0.01 for g in gaps) and any(g != 0 for g in gaps)
    # The steps ran in bfloat16: the same seed, data and order end in other weights.
    a, b = load_trained_model(exact.path).state_dict(), load_trained_model(fast.path).state_dict()
    assert not torch.equal(a["out_head.weight"], b["out_head.weight"])
    assert fast.state.train_losses[-1] == pytest.approx(exact.state.train_losses[-1], abs=0.1)
    g = fast.state.bf16_gaps[0]
    assert f"(bfloat16 on the same batches: {g[0]:+.4f}, {g[1]:+.4f})" in lines[0]
    # Saved with its precision; a resume continues in it and refuses the other one.
    assert saved_run("fast-bf16")["hyperparameters"]["fast"] is True
    assert saved_run("exact-f32")["hyperparameters"]["fast"] is False
    meta = {"preset": "quick", "num_epochs": 3, "hyperparameters": {"fast": True}}
    assert preset_of(meta).fast and not preset_of({**meta, "hyperparameters": {}}).fast
    stopped = run_training(replace(TINY, fast=True), text, "fast-stopped", log=None, should_stop=lambda: True)
    with pytest.raises(InvalidParameterError, match="trained in bfloat16 .* same precision"):
        run_training(TINY, text, "fast-stopped", resume=True, log=None)
    done = run_training(replace(TINY, fast=True), text, "fast-stopped", resume=True, log=None)
    assert done.finished and len(done.state.bf16_gaps) == len(done.state.train_losses)
    assert stopped.state.bf16_gaps == done.state.bf16_gaps[: len(stopped.state.bf16_gaps)]


@pytest.mark.slow
def test_cli_train_fast(tmp_path, verdict_path, capsys):
    from core.__main__ import main
    from core.models.checkpoints import saved_run

    corpus = tmp_path / "slice.txt"
    corpus.write_text(verdict_path.read_text(encoding="utf-8")[:4000], encoding="utf-8")
    args = ["train", "--preset", "quick", "--corpus", str(corpus), "--epochs", "1", "--out", "cli-fast"]
    assert main([*args, "--fast"]) == 0
    captured = capsys.readouterr()
    gaps = saved_run("cli-fast")["state"]["bf16_gaps"]
    assert f"(bfloat16 on the same batches: {gaps[0][0]:+.4f}, {gaps[0][1]:+.4f})" in captured.out
    assert ("no native bfloat16" in captured.err) == (bf16_unavailable("cpu") is not None)
