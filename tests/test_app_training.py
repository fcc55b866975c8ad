"""The Training and Compare views through AppTest: real script runs, a real training thread."""

from __future__ import annotations

import re
import time

import pytest
from conftest import BOOK_TEXTS, ROOT
from streamlit.testing.v1 import AppTest

from core.checkpoints import load_trained_model, model_path, saved_run
from core.loss import compute_loss
from core.runner import run_training

TIMEOUT = 300


pytestmark = pytest.mark.usefixtures("app_env")


def page(name: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.switch_page(f"components/{name}.py").run()
    assert not at.exception, at.exception
    return at


def text_of(at: AppTest) -> str:
    parts = [e.value for kind in ("error", "warning", "success", "info") for e in at.get(kind)]
    return " ".join(re.sub(r"\\(.)", r"\1", str(p)) for p in parts)


def test_training_view_trains_in_the_background_stops_and_saves():
    at = page("training")
    assert at.radio(key="train_preset").value == "quick"
    at.text_input(key="train_name_quick").set_value("app-quick").run()
    at.button(key="train_start").click().run()
    assert not at.exception, at.exception
    run = at.session_state["_train_run"]
    at.button(key="train_stop").click().run()  # the live fragment's Stop button
    run.join(TIMEOUT)
    assert not run.running
    at.run()
    assert not at.exception, at.exception
    snap = run.snapshot()
    assert snap["error"] is None and snap["stopped"] and snap["step"] >= 1
    assert "Stopped after" in text_of(at) and model_path("app-quick").is_file()
    # The saved run is in the model picker of every view, and Resume is offered.
    assert "trained-app-quick" in at.selectbox(key="model").options or any(
        "app-quick" in o for o in at.selectbox(key="model").options
    )
    assert at.text_input(key="train_name_quick").value == "app-quick"  # kept through the live run
    assert not at.button(key="train_resume").disabled


def test_training_view_fast_mode_only_where_offered_and_how_far_from_float32(monkeypatch):
    from core.precision import FORCE_ENV, bf16_unavailable

    monkeypatch.delenv(FORCE_ENV, raising=False)
    reason = bf16_unavailable("cpu")
    at = page("training")
    assert at.toggle(key="train_fast").disabled == (reason is not None)

    monkeypatch.setenv(FORCE_ENV, "1")  # offered anyway, so that this CPU runs it too
    at = page("training")
    at.text_input(key="train_name_quick").set_value("app-fast").run()
    at.toggle(key="train_fast").set_value(True).run()
    at.button(key="train_start").click().run()
    assert not at.exception, at.exception
    run = at.session_state["_train_run"]
    deadline = time.monotonic() + TIMEOUT
    while run.snapshot()["bf16_gap"] is None and run.running and time.monotonic() < deadline:
        time.sleep(0.5)  # the first evaluation follows the first step
    at.button(key="train_stop").click().run()
    run.join(TIMEOUT)
    at.run()
    snap = run.snapshot()
    assert snap["error"] is None and snap["fast"] and snap["bf16_gap"] is not None
    gap = snap["bf16_gap"]
    assert f"bfloat16 on the same batches gave {gap[0]:+.4f} (training) and {gap[1]:+.4f}" in text_of(at)
    assert saved_run("app-fast")["hyperparameters"]["fast"] is True


def test_training_view_refuses_a_bad_or_taken_name():
    at = page("training")
    at.text_input(key="train_name_quick").set_value("../etc").run()
    assert not at.exception and "Model name" in text_of(at)


def test_compare_view_matches_core_for_each_model(verdict_path):
    from dataclasses import replace

    from test_train import TINY

    run_training(
        replace(TINY, num_epochs=1), verdict_path.read_text(encoding="utf-8")[:6000], "cmp-tiny", log=None
    )
    at = page("compare")
    keys = at.multiselect(key="cmp_models").value
    assert "untrained-124m" in keys and "trained-cmp-tiny" in keys
    values = [m.value for m in at.metric]
    tiny = compute_loss(load_trained_model(model_path("cmp-tiny")), BOOK_TEXTS)
    assert "10.7940" in values and f"{float(tiny.loss):.4f}" in values


def test_compare_reuses_the_dataset_views_result_for_a_trained_model(verdict_path):
    """One store and one key: a trained model's losses computed in the Dataset view appear in
    Compare without a second Compute, whatever the (unused) seed in the sidebar says."""
    from dataclasses import replace

    from test_train import TINY

    run_training(
        replace(TINY, num_epochs=1), verdict_path.read_text(encoding="utf-8")[:6000], "reuse-tiny", log=None
    )
    at = page("dataset")
    at.selectbox(key="model").set_value("trained-reuse-tiny").run()
    at.number_input(key="ds_stride").set_value(32).run()  # Compare's loaders: stride = context length (32)
    at.button(key="ds_compute").click().run()
    assert not at.exception, at.exception
    val = next(m.value for m in at.metric if m.label == "Validation loss")
    at.switch_page("components/compare.py").run()
    at.multiselect(key="cmp_models").set_value(["trained-reuse-tiny"]).run()
    assert not at.exception, at.exception
    rows = at.dataframe[-1].value.to_dict("records")
    assert rows[0]["validation loss"] == pytest.approx(float(val), abs=5e-5)
    assert "note" not in rows[0] or rows[0]["note"] != "not computed yet"
