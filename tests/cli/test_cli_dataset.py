"""`python -m core dataset`: counts and losses as JSON or text, progress on stderr, errors exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.__main__ import main
from core.models.corpus import VERDICT_ENV

# Its module fixtures are built once: under pytest-xdist the module runs in one worker.
pytestmark = pytest.mark.xdist_group("cli-dataset")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def first_batches(verdict_path, tmp_path_factory):
    """The book's code on the first training and the validation batch (section 5.1.3 setup)."""
    from core.book.model import GPT_CONFIG_124M
    from core.runtime.tokenizer_files import seed_tiktoken_cache

    reason = "reference code absent: pip install --no-deps llms-from-scratch==1.0.19 (as .ci/run does)"
    ch02 = pytest.importorskip("llms_from_scratch.ch02", reason=reason)
    ch04 = pytest.importorskip("llms_from_scratch.ch04", reason=reason)
    ch05 = pytest.importorskip("llms_from_scratch.ch05", reason=reason)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(seed_tiktoken_cache(tmp_path_factory.mktemp("tiktoken"))))
        text = verdict_path.read_text(encoding="utf-8")
        split = int(0.9 * len(text))
        torch.manual_seed(123)
        model = ch04.GPTModel(GPT_CONFIG_124M).eval()
        kw = {"batch_size": 2, "max_length": 256, "stride": 256}
        train = ch02.create_dataloader_v1(text[:split], drop_last=True, shuffle=True, **kw)
        val = ch02.create_dataloader_v1(text[split:], drop_last=False, shuffle=False, **kw)
        torch.manual_seed(123)
        with torch.no_grad():
            return [ch05.calc_loss_batch(*next(iter(loader)), model, "cpu").item() for loader in (train, val)]


@pytest.mark.slow
def test_json_counts_and_losses(verdict_path, first_batches, capsys):
    assert main(["dataset", "--corpus", str(verdict_path), "--num-batches", "1", "--json"]) == 0
    out, err = capsys.readouterr()
    d = json.loads(out)
    assert (d["characters"], d["tokens"], d["train_tokens"], d["val_tokens"]) == (20479, 5145, 4608, 512)
    assert (d["train"]["windows"], d["train"]["batches"], d["val"]["windows"], d["val"]["batches"]) == (
        18,
        9,
        2,
        1,
    )
    assert d["settings"] == {
        "train_ratio": 0.9,
        "context_length": 256,
        "stride": 256,
        "batch_size": 2,
        "seed": 123,
    }
    assert d["num_batches"] == 1 and d["cancelled"] is False and d["warnings"] == []
    assert [d["train_loss"], d["val_loss"]] == pytest.approx(first_batches, abs=1e-6)
    assert d["train_perplexity"] == pytest.approx(2.718281828459045 ** d["train_loss"])
    assert "train batches 1/2" in err and "val batches 2/2" in err


@pytest.mark.slow
def test_text_output_and_env_var_corpus(verdict_path, monkeypatch, capsys):
    monkeypatch.setenv(VERDICT_ENV, str(verdict_path))
    args = ["dataset", "--num-batches", "1", "--context-length", "64", "--stride", "128", "--batch-size", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Characters: 20,479   tokens: 5,145" in out
    assert "corpus: The Verdict" in out and "context length 64, stride 128, batch size 1" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("train ", "val "))}
    assert rows["train"][1:5] == ["18,431", "4,612", "36", "36"]  # range(0, 4612 - 64, 128) has 36 starts
    assert 10 < float(rows["train"][6]) < 12


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,message",
    [
        (["--train-ratio", "1.5"], "between 0 and 1"),
        (["--context-length", "1024"], "longer than the model's 256"),
        (["--batch-size", "0"], "batch size must be"),
        (["--num-batches", "0"], "number of batches"),
    ],
)
def test_bad_settings_exit_2(verdict_path, capsys, args, message):
    assert main(["dataset", "--corpus", str(verdict_path), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


@pytest.mark.slow
def test_bad_corpora_exit_2(tmp_path, capsys):
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café crème".encode("latin-1") * 50)
    short = tmp_path / "short.txt"
    short.write_text("Only a few words.", encoding="utf-8")
    for path, message in [
        (tmp_path / "missing.txt", "No corpus file"),
        (binary, "binary"),
        (latin, "not UTF-8"),
        (short, "split has no batch"),
    ]:
        assert main(["dataset", "--corpus", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err


@pytest.mark.slow
def test_module_entry_point_offline_without_corpus(tmp_path, first_batches):
    """A real process with no corpus given, an empty cache and every socket refused: The Verdict
    that ships with LossLens gives the book's losses on the first batch of each split (the whole
    pass's printed losses: tests/lessons/test_dataset.py)."""
    code = (
        "import socket, sys\n"
        "def offline(*a, **k): raise OSError('network is unreachable')\n"
        "socket.socket.connect = socket.socket.connect_ex = socket.create_connection = offline\n"
        "from core.__main__ import main\n"
        "sys.exit(main(['dataset', '--json', '--num-batches', '1']))\n"
    )
    env = {**os.environ, "LOSSLENS_CACHE_DIR": str(tmp_path)}
    env.pop(VERDICT_ENV, None)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["corpus"] == "The Verdict"
    assert out["train_loss"] == pytest.approx(first_batches[0], abs=1e-4)  # the book's code's
    assert out["val_loss"] == pytest.approx(10.98110580444336, abs=1e-4)  # the book's (one batch)
    # Nothing downloaded or cached; at most LossLens's own linear kernel, compiled here (core/fast/panel.py).
    files = [p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()]
    assert all(p.parent == Path("kernels") and p.name.startswith("panel_linear-") for p in files), files
