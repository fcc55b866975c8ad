"""Where the model runs: `auto`, explicit devices, $LOSSLENS_DEVICE, and the CLI's --model/--device.

Tests marked `gpu` run only where CUDA exists (never faked): the book's numbers within 1e-4 on the
GPU, the dataset loss and a training step there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from conftest import BOOK_TEXTS, ROOT

import core.fast.linear
import core.fast.onednn
import core.fast.panel
from core.errors import InvalidParameterError
from core.lessons.loss import compute_loss
from core.models.registry import available_models, load_model
from core.runtime.device import (
    DEVICE_ENV,
    available_devices,
    available_memory_gb,
    describe,
    model_device,
    resolve_device,
)
from core.serving.frozen import freeze

HAS_CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu


def test_cpu_is_always_there_and_last():
    have = available_devices()
    assert have[-1] == "cpu" and len(set(have)) == len(have)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")


def test_auto_picks_the_fastest_device_present(monkeypatch):
    assert resolve_device("auto").type == available_devices()[0]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert available_devices()[0] == "cuda"  # CUDA before MPS before the CPU, as the book's code


def test_the_environment_variable_decides_when_nothing_is_given(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert resolve_device(None) == torch.device("cpu")
    monkeypatch.setenv(DEVICE_ENV, "tpu")
    with pytest.raises(
        InvalidParameterError, match="Unknown device 'tpu'; choose one of auto, cpu, cuda, mps"
    ):
        resolve_device(None)
    assert resolve_device("cpu") == torch.device("cpu")  # an explicit choice wins


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
def test_a_missing_gpu_is_a_clear_error():
    with pytest.raises(InvalidParameterError) as e:
        resolve_device("cuda")
    assert "no CUDA device" in str(e.value) and "auto, cpu" in str(e.value)


def test_memory_is_read_where_the_tensors_live():
    free = available_memory_gb("cpu")
    assert free is None or 0 < free < 1e5
    assert describe("cpu") == "CPU"


@pytest.mark.slow
def test_load_model_puts_the_model_on_the_device():
    model = load_model("untrained-124m", 123, "cpu")
    assert model_device(model) == torch.device("cpu") and not model.training
    # Served, the plug-in packs its weights, and a .to("cpu") keeps them packed.
    model = freeze(model).to("cpu")
    packs = core.fast.onednn.AVAILABLE or core.fast.panel.selected()
    assert isinstance(model.trf_blocks[0].att.W_query.weight, core.fast.linear.PackedWeight) == packs
    assert float(compute_loss(model, BOOK_TEXTS).loss) == pytest.approx(10.7940, abs=5e-5)


# --- the command line: --model KEY and --device ----------------------------------------


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_cli_book_numbers_on_the_cpu():
    proc = run("loss", *BOOK_TEXTS, "--device", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert round(s["loss"], 4) == 10.7940 and s["perplexity"] == pytest.approx(48725.82, rel=1e-5)
    assert s["model"].endswith("seed 123, on CPU") and s["model_key"] == "untrained-124m"


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI's main() in this process (its process-level behaviour is tests/cli's)."""
    from core.__main__ import main

    try:
        code = main(list(args))
    except SystemExit as stop:
        code = stop.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("command", ["loss", "dataset", "train"])
def test_cli_unknown_model_lists_the_valid_keys(command, capsys):
    extra = ["some text here"] if command == "loss" else []
    code, out, err = run_main(capsys, command, *extra, "--model", "gpt5")
    assert code == 2 and out == ""
    assert err.startswith("error: Unknown model 'gpt5'; choose one of untrained-124m, gpt2-124m")


@pytest.mark.parametrize("command", ["loss", "dataset", "train"])
def test_cli_unknown_device_exits_2(command, capsys):
    extra = ["some text here"] if command == "loss" else []
    code, _, err = run_main(capsys, command, *extra, "--device", "tpu")
    assert code == 2
    assert "Unknown device 'tpu'" in err and "Traceback" not in err


@pytest.mark.slow
def test_cli_uses_a_trained_model_by_its_key(verdict_path, tmp_path, monkeypatch):
    """Train a tiny model into a cache, then `loss --model trained-NAME` reads it from there."""
    from test_training import TINY

    from core.models.checkpoints import load_trained_model, model_path
    from core.serving.runner import run_training

    monkeypatch.setenv("LOSSLENS_CACHE_DIR", str(tmp_path))
    run_training(
        replace(TINY, num_epochs=1), verdict_path.read_text(encoding="utf-8")[:6000], "cli-tiny", log=None
    )
    assert "trained-cli-tiny" in available_models()
    expected = float(compute_loss(load_trained_model(model_path("cli-tiny")), BOOK_TEXTS).loss)
    proc = run("loss", *BOOK_TEXTS, "--model", "trained-cli-tiny", "--device", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["model_key"] == "trained-cli-tiny" and s["model"].startswith("Trained: cli-tiny")
    assert (
        s["loss"] == pytest.approx(expected, abs=1e-5) and abs(s["loss"] - 10.7940) > 0.05
    )  # not the book model


# --- on a GPU (run where one exists) ------------------------------------------------------


@gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_book_numbers_on_the_gpu_within_1e_4(model):
    cpu = compute_loss(model, BOOK_TEXTS)
    on_gpu = load_model("untrained-124m", 123, "cuda")
    assert model_device(on_gpu).type == "cuda"
    r = compute_loss(on_gpu, BOOK_TEXTS)
    assert float(r.loss) == pytest.approx(float(cpu.loss), abs=1e-4)
    assert torch.allclose(r.target_probas.cpu(), cpu.target_probas, rtol=1e-3, atol=0)
    assert not torch.backends.cuda.matmul.allow_tf32


@gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_dataset_loss_on_the_gpu(verdict_path):
    from core.lessons.dataset import evaluate_dataset

    r = evaluate_dataset(load_model("untrained-124m", 123, "cuda"), verdict_path.read_text(encoding="utf-8"))
    assert r.train_loss == pytest.approx(10.98758347829183, abs=1e-4)
    assert r.val_loss == pytest.approx(10.98110580444336, abs=1e-4)


@pytest.mark.slow
def test_a_model_too_big_for_the_devices_free_memory_is_refused(monkeypatch):
    """The check reads the target device's own free memory (a GPU's, not the RAM)."""
    import core.runtime.device

    asked = []
    monkeypatch.setattr(core.runtime.device, "available_memory_gb", lambda d: asked.append(d) or 0.25)
    with pytest.raises(InvalidParameterError, match=r"needs 0\.6 GB on META, which has 0\.2 GB free"):
        load_model("untrained-124m", 123, torch.device("meta"))
    assert asked == [torch.device("meta")]
