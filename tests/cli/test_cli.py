"""`python -m core loss`: the book's numbers as tables and JSON; bad input gives `error: ...` and exit 2."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import core.runtime.rng
from core.__main__ import main
from core.lessons.loss import MAX_CHARS, MAX_TEXTS, compute_loss
from core.lessons.report import summarize
from core.lessons.tokens import token_piece

ROOT = Path(__file__).resolve().parents[2]
BOOK_TEXTS = ["every effort moves you", "I really like chocolate"]
LONG_TEXT = "a" + " a" * 257  # 258 tokens: one more than a 256-token context allows


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "core", "loss", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def strict_json(text: str) -> dict:
    """JSON as other tools read it: NaN or Infinity would be an error."""

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def same_model(model, monkeypatch):
    """The CLI builds `build_untrained_model(seed)`; for seed 123 hand it the session's copy of
    that same model (saves building 163M parameters per call)."""
    real = core.runtime.rng.build_untrained_model
    monkeypatch.setattr(
        core.runtime.rng, "build_untrained_model", lambda seed=123: model if seed == 123 else real(seed)
    )
    return model


@pytest.fixture
def no_model(monkeypatch):
    """Options are checked before the model is built."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before the options were checked")

    monkeypatch.setattr(core.runtime.rng, "build_untrained_model", refuse)


# --- the book's example -----------------------------------------------------------------


@pytest.mark.slow
def test_json_shows_the_book_numbers():
    proc = run_cli(*BOOK_TEXTS, "--json")
    assert proc.returncode == 0, proc.stderr
    s = strict_json(proc.stdout)
    assert round(s["loss"], 4) == 10.7940 and round(s["neg_avg_log_probas"], 4) == 10.7940
    assert round(s["avg_log_probas"], 4) == -10.7940
    assert s["perplexity"] == pytest.approx(48725.8, rel=1e-5)
    assert [round(x, 4) for x in s["log_probas"]] == [
        -9.5042,
        -10.3796,
        -11.3677,
        -11.4798,
        -9.7764,
        -12.2561,
    ]
    assert s["shapes"]["logits"] == [2, 3, 50257] and s["shapes"]["logits_flat"] == [6, 50257]
    assert s["model"] == "Untrained GPT-2 124M (book, section 5.1), seed 123, on CPU"
    assert s["model_key"] == "untrained-124m" and s["temperature"] == 1.0 and s["top_k"] == 5
    t1 = s["texts"][0]
    assert t1["text"] == BOOK_TEXTS[0] and t1["token_ids"] == [16833, 3626, 6100, 345]
    assert t1["tokens"] == ["every", "␣effort", "␣moves", "␣you"]
    assert [p["target_id"] for p in t1["positions"]] == [3626, 6100, 345]
    assert [f"{p['target_proba']:.3e}" for p in t1["positions"]] == ["7.454e-05", "3.106e-05", "1.156e-05"]
    assert [p["argmax_id"] for p in s["texts"][1]["positions"]] == [49906, 29669, 41751]
    for p in t1["positions"] + s["texts"][1]["positions"]:
        assert len(p["top_k"]) == 5 and p["top_k"][0]["id"] == p["argmax_id"]
        assert p["rank"] >= 1 and math.isclose(p["log_proba"], math.log(p["target_proba"]), rel_tol=1e-5)


def test_tables_show_every_step(same_model, tokenizer, capsys):
    """The tables in process (test_output_to_an_ascii_pipe prints them from a real process)."""
    assert main(["loss", *BOOK_TEXTS]) == 0
    out = capsys.readouterr().out
    for line in (
        "inputs              [[16833, 3626, 6100], [40, 1107, 588]]",
        "targets             [[3626, 6100, 345], [1107, 588, 11311]]",
        "logits [2, 3, 50257] -> flattened [6, 50257]; targets [2, 3] -> [6]",
        "log_probas          -9.5042, -10.3796, -11.3677, -11.4798, -9.7764, -12.2561",
        "avg_log_probas      -10.7940",
        "neg_avg_log_probas  10.7940",
        "F.cross_entropy     10.7940",
        "perplexity          48,726",
    ):
        assert line in out, line
    assert "every (16833) | ␣effort (3626) | ␣moves (6100) | ␣you (345)" in out
    # Target probas as the book prints them (7.4541e-05 ... 4.7559e-06); the 5th digit may vary
    # with the CPU's float32 rounding, so read the numbers back and compare with a tolerance.
    probas = [float(p) for p in re.findall(r"->\s+\S+\s+\S+\s+(\d\.\d{4}e-\d\d)", out)]
    book = [7.4541e-05, 3.1061e-05, 1.1563e-05, 1.0337e-05, 5.6776e-05, 4.7559e-06]
    assert probas == pytest.approx(book, rel=2e-4)
    argmax_piece = token_piece(16657, tokenizer).display  # top-1 after "every"
    row = next(line for line in out.splitlines() if "every" in line and "->" in line)
    assert "␣effort" in row and argmax_piece in row and "top-5" in out


def test_only_a_corpus_pass_hands_the_model_to_the_plug_in(same_model, monkeypatch, tmp_path, capsys):
    """`loss` (a few texts) runs the registry's model as built; `dataset` freezes it for the plug-in."""
    import core.serving.frozen

    handed = []
    real = core.serving.frozen.freeze
    monkeypatch.setattr(core.serving.frozen, "freeze", lambda m: handed.append(m) or real(m))
    assert main(["loss", *BOOK_TEXTS, "--json"]) == 0
    assert handed == [] and round(json.loads(capsys.readouterr().out)["loss"], 4) == 10.7940
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("every effort moves you, and I really like chocolate. " * 6, encoding="utf-8")
    assert main(["dataset", "--corpus", str(corpus), "--context-length", "8", "--stride", "8", "--json"]) == 0
    assert handed == [same_model]
    assert json.loads(capsys.readouterr().out)["train_loss"] > 0


def test_options_change_the_numbers(same_model, capsys):
    assert main(["loss", *BOOK_TEXTS, "--top-k", "3", "--temperature", "2", "--json"]) == 0
    s = strict_json(capsys.readouterr().out)
    expected = summarize(compute_loss(same_model, BOOK_TEXTS, top_k=3, temperature=2.0))
    assert s["temperature"] == 2.0 and s["top_k"] == 3
    assert all(len(p["top_k"]) == 3 for t in s["texts"] for p in t["positions"])
    assert s["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert abs(s["loss"] - 10.7940) > 0.01  # the temperature did change the loss


@pytest.mark.slow
def test_seed_changes_the_model(capsys):
    """A different seed is a different untrained model (built for real here)."""
    assert main(["loss", *BOOK_TEXTS, "--seed", "7", "--json"]) == 0
    s = strict_json(capsys.readouterr().out)
    assert s["model"].startswith("Untrained GPT-2 124M (book, section 5.1), seed 7, on ")
    assert math.isfinite(s["loss"]) and abs(s["loss"] - 10.7940) > 1e-3


def test_underflow_is_strict_json_and_readable(same_model, capsys):
    assert main(["loss", *BOOK_TEXTS, "--temperature", "0.001", "--json"]) == 0
    s = strict_json(capsys.readouterr().out)
    assert s["neg_avg_log_probas"] == "inf" and s["perplexity"] == "inf" and math.isfinite(s["loss"])
    assert main(["loss", *BOOK_TEXTS, "--temperature", "0.001"]) == 0
    out = capsys.readouterr().out
    assert "neg_avg_log_probas  inf" in out and "underflowed" in out and "perplexity          inf" in out


@pytest.mark.slow
def test_padded_batch_and_hard_texts(same_model, capsys):
    texts = ["Hi there", "I 💜 chocolate<|endoftext|>مرحبا", "我真的很喜欢巧克力", "नमस्ते\tदुनिया\x00\u200b"]
    assert main(["loss", *texts, "--json"]) == 0
    s = strict_json(capsys.readouterr().out)
    assert s["padded"] is True and [t["text"] for t in s["texts"]] == texts
    assert 50256 in s["texts"][1]["token_ids"] and "<|endoftext|>" in s["texts"][1]["tokens"]
    shown = "".join("".join(t["tokens"]) for t in s["texts"])
    assert "\ufffd" not in shown and "\x00" not in shown and "\u200b" not in shown and "<0x" in shown
    assert main(["loss", *texts]) == 0
    out = capsys.readouterr().out
    assert "(padded; padding ignored)" in out and "\ufffd" not in out


@pytest.mark.slow
def test_output_to_an_ascii_pipe():
    """A pipe or console without UTF-8 gets escapes instead of a UnicodeEncodeError."""
    proc = subprocess.run(
        [sys.executable, "-m", "core", "loss", "I 💜 chocolate", "every effort moves you"],
        cwd=ROOT,
        capture_output=True,
        timeout=300,
        env={**os.environ, "PYTHONIOENCODING": "ascii"},
    )
    assert proc.returncode == 0, proc.stderr.decode("ascii", "replace")
    out = proc.stdout.decode("ascii")
    assert "\\u2423effort (3626)" in out and "perplexity" in out


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "texts, message",
    [
        ([""], "Text 1 is empty"),
        (["every effort", "  \n\t"], "Text 2 is empty"),
        (["Hi"], "Text 1 is a single token"),
        (["<|endoftext|>"], "single token"),
        ([LONG_TEXT], "Text 1 has 258 tokens; this model reads at most 256 tokens"),
        (["hello there"] * (MAX_TEXTS + 1), f"at most {MAX_TEXTS} fit in one batch"),
        (["a" + " a" * 255] * 5, "at most 1024 fit in one batch"),
        (["x" * (MAX_CHARS + 1)], "200,001 characters; at most 200,000"),
        (["a" + " a" * 255, "--top-k", "2000"], "top-k 2000 x 255 positions = 510,000 listed tokens"),
    ],
)
def test_bad_texts(same_model, capsys, texts, message):
    assert main(["loss", *texts]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and message in captured.err
    assert captured.out == "" and "Traceback" not in captured.err


@pytest.mark.parametrize(
    "option, message",
    [
        (["--top-k", "0"], "top-k must be a whole number from 1 to 50257, got 0"),
        (["--top-k", "50258"], "from 1 to 50257, got 50258"),
        (["--temperature", "0"], "temperature must be a finite number > 0"),
        (["--temperature", "-1"], "temperature must be a finite number > 0"),
        (["--temperature", "nan"], "got nan"),
        (["--temperature", "inf"], "got inf"),
        (["--seed", "-1"], "seed must be a whole number"),
        (["--seed", str(2**64)], "seed must be a whole number"),
    ],
)
def test_bad_options_fail_before_the_model_is_built(no_model, capsys, option, message):
    assert main(["loss", *BOOK_TEXTS, *option]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


@pytest.mark.parametrize("option", [["--top-k", "five"], ["--top-k", "2.5"], ["--temperature", "hot"]])
def test_non_numbers_are_usage_errors(no_model, capsys, option):
    with pytest.raises(SystemExit) as e:
        main(["loss", *BOOK_TEXTS, *option])
    assert e.value.code == 2 and "invalid" in capsys.readouterr().err


@pytest.mark.slow
def test_bad_input_through_the_process():
    """The real process: message on stderr, exit 2, no traceback."""
    for args, message in (
        ([""], "error: Text 1 is empty"),
        (["every effort", LONG_TEXT], "error: Text 2 has 258 tokens; this model reads at most 256 tokens"),
        (["ok then", "--temperature", "nan"], "error: temperature must be a finite number > 0"),
    ):
        proc = run_cli(*args)
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr.startswith(message) and "Traceback" not in proc.stderr
