"""Loss by position in the window, against the split's loss and a window-by-window computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.book.loss import calc_loss_loader
from core.lessons.positions import position_losses
from core.models.loaders import LoaderSettings, make_loaders


@pytest.mark.slow
def test_count_weighted_position_means_equal_the_books_split_loss(model, verdict_path):
    text = verdict_path.read_text(encoding="utf-8")
    settings = LoaderSettings()  # the book's: context 256, stride 256, batch 2, drop_last for training
    r = position_losses(model, text, settings, num_batches=2)  # two: a mean across batches
    data = make_loaders(text, settings)
    for split, loader in (("train", data.train_loader), ("val", data.val_loader)):
        p = r[split]
        weighted = sum(m * c for m, c in zip(p["position_means"], p["counts"], strict=True)) / sum(
            p["counts"]
        )
        assert len(p["position_means"]) == 256
        assert weighted == pytest.approx(p["loss"], abs=1e-6)
        assert p["loss"] == pytest.approx(calc_loss_loader(loader, model, "cpu", num_batches=2), abs=1e-6)


@pytest.mark.slow
def test_position_means_against_window_by_window(model, verdict_path):
    text = verdict_path.read_text(encoding="utf-8")[:3000]
    settings = LoaderSettings(context_length=16, stride=16, batch_size=3)
    r = position_losses(model, text, settings)
    data = make_loaders(text, settings)
    for split, loader in (("train", data.train_loader), ("val", data.val_loader)):
        per_window = []
        with torch.inference_mode():
            for x, y in loader:
                for row in range(len(x)):  # one window at a time: no batching shared with the code under test
                    logits = model(x[row : row + 1])[0]
                    per_window.append(F.cross_entropy(logits.double(), y[row], reduction="none"))
        stacked = torch.stack(per_window)
        assert r[split]["counts"] == [len(per_window)] * 16
        assert r[split]["position_means"] == pytest.approx(stacked.mean(0).tolist(), abs=1e-5)
        assert r[split]["token_weighted_loss"] == pytest.approx(float(stacked.mean()), abs=1e-5)


@pytest.mark.slow
def test_progress_and_stop(model, verdict_path):
    text = verdict_path.read_text(encoding="utf-8")[:3000]
    seen = []
    r = position_losses(
        model,
        text,
        LoaderSettings(context_length=16, stride=16),
        progress=lambda *a: seen.append(a),
        cancel=lambda: len(seen) > 2,
    )
    assert r["cancelled"] and seen[0] == (0, seen[0][1], "train")


@pytest.mark.slow
def test_cli_dataset_json_has_the_position_means(model, verdict_path, tmp_path, monkeypatch, capsys):
    import json

    import core.runtime.rng
    from core.__main__ import main

    corpus = tmp_path / "c.txt"
    corpus.write_text(verdict_path.read_text(encoding="utf-8")[:3000], encoding="utf-8")
    monkeypatch.setattr(core.runtime.rng, "build_untrained_model", lambda seed=123: model)
    args = [
        "dataset",
        "--corpus",
        str(corpus),
        "--context-length",
        "16",
        "--stride",
        "16",
        "--positions",
        "--json",
    ]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    expected = position_losses(
        model, corpus.read_text(encoding="utf-8"), LoaderSettings(context_length=16, stride=16)
    )
    for split in ("train", "val"):
        p = out["positions"][split]
        assert p["position_means"] == pytest.approx(expected[split]["position_means"], abs=1e-9)
        weighted = sum(m * c for m, c in zip(p["position_means"], p["counts"], strict=True)) / sum(
            p["counts"]
        )
        assert weighted == pytest.approx(out[f"{split}_loss"], abs=1e-6)
