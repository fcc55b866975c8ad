"""`python -m core train --model KEY`: a run that starts from a registry model's weights."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from test_training import TINY

from core.__main__ import main
from core.models.checkpoints import load_trained_model, model_path
from core.models.registry import load_model
from core.serving.runner import run_training


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSLENS_CACHE_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.slow
def test_a_run_starts_from_the_given_models_weights(cache, verdict_path):
    text = verdict_path.read_text(encoding="utf-8")[:6000]
    first = run_training(replace(TINY, num_epochs=2), text, "first", log=None)
    start = load_model("trained-first", 123, "cpu")
    before = {k: v.clone() for k, v in start.state_dict().items()}
    assert all(
        torch.equal(before[k], v) for k, v in load_trained_model(model_path("first")).state_dict().items()
    )

    more = run_training(replace(TINY, num_epochs=1), text, "more", init_model=start, log=None)
    fresh = run_training(replace(TINY, num_epochs=1), text, "fresh", log=None)
    # Continuing where "first" ended: its first evaluation is near first's last, far below a fresh run's.
    assert more.state.train_losses[0] < fresh.state.train_losses[0] - 0.2
    assert abs(more.state.train_losses[0] - first.state.train_losses[-1]) < 0.5
    saved = load_trained_model(model_path("more")).state_dict()
    assert any(not torch.equal(saved[k], before[k]) for k in before)  # and it trained on from there


def train_quick(corpus, *options: str) -> int:
    """`python -m core train --preset quick --epochs 1 --corpus CORPUS OPTIONS...`, in process."""
    return main(["train", "--preset", "quick", "--epochs", "1", "--corpus", str(corpus), *options])


@pytest.mark.slow
def test_the_cli_trains_from_a_model_key_on_a_device(cache, verdict_path, capsys, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(verdict_path.read_text(encoding="utf-8")[:3000], encoding="utf-8")
    code = train_quick(corpus, "--model", "untrained-124m", "--device", "cpu", "--out", "from-book")
    out = capsys.readouterr().out
    assert code == 0 and "finished:" in out
    saved = load_trained_model(model_path("from-book"))
    assert saved.cfg["emb_dim"] == 768 and saved.cfg["n_layers"] == 12  # the 124M model, not the quick one


@pytest.mark.slow
def test_a_model_that_cannot_read_the_presets_windows_is_a_clear_error(cache, verdict_path, capsys, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(verdict_path.read_text(encoding="utf-8")[:6000], encoding="utf-8")
    run_training(replace(TINY, num_epochs=1), corpus.read_text(encoding="utf-8"), "small", log=None)
    code = train_quick(corpus, "--model", "trained-small", "--out", "continued")
    assert code == 2  # the quick preset's 64-token windows do not fit a 32-token model
    assert "context length" in capsys.readouterr().err


def test_the_estimate_times_the_start_models_size_not_the_presets(cache, monkeypatch):
    import core.models.presets

    timed = []

    def estimate(preset, text, **kwargs):
        timed.append(preset.cfg)
        return {"step_s": 1.0}

    monkeypatch.setattr(core.models.presets, "estimate_time", estimate)
    monkeypatch.setattr(core.models.presets, "describe_estimate", lambda e: "estimate")
    assert main(["train", "--preset", "quick", "--model", "untrained-124m", "--estimate"]) == 0
    assert timed[0]["emb_dim"] == 768 and timed[0]["n_layers"] == 12  # the 124M, not the quick preset's
