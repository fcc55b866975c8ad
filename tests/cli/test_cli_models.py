"""The CLI and saved models: `train --out NAME` keeps a saved model unless --force, and
`--resume` of a name that cannot resume says why in one line."""

from __future__ import annotations

import pytest
from test_checkpoints import _save

from core.models.checkpoints import model_path, saved_run


@pytest.fixture(autouse=True)
def cache(fresh_cache):
    return fresh_cache


@pytest.fixture
def corpus(tmp_path, verdict_path):
    path = tmp_path / "slice.txt"
    path.write_text(verdict_path.read_text(encoding="utf-8")[:8000], encoding="utf-8")
    return str(path)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.slow
def test_train_refuses_to_overwrite_a_saved_model_without_force(corpus, capsys):
    from core.__main__ import main

    _save("v1")  # e.g. saved from the browser on a local server
    before = model_path("v1").read_bytes()
    args = ["train", "--preset", "quick", "--epochs", "1", "--corpus", corpus, "--out", "v1"]
    assert main(args) == 2
    assert _error_line(capsys) == (
        "error: A model named 'v1' is already saved; add --force to overwrite it, or choose another --out."
    )
    assert model_path("v1").read_bytes() == before
    assert main([*args, "--force"]) == 0
    assert "finished: " in capsys.readouterr().out
    assert saved_run("v1")["preset"] == "quick"  # replaced by the quick run


def test_resume_of_a_name_never_trained_says_so(capsys):
    from core.__main__ import main

    assert main(["train", "--resume", "--out", "never-trained"]) == 2
    line = _error_line(capsys)
    assert (
        line == "error: No model is saved as 'never-trained', so there is nothing to resume; train it first."
    )
    assert "safetensors" not in line


def test_resume_of_a_finished_run_says_so(capsys):
    from core.__main__ import main

    _save("done", stopped=False)
    assert main(["train", "--resume", "--out", "done"]) == 2
    assert "cannot be resumed: it finished all its epochs" in _error_line(capsys)
