"""The Training and Compare views through AppTest: real script runs, a real training thread."""

from __future__ import annotations

import re

import pytest
from conftest import BOOK_TEXTS, ROOT
from streamlit.testing.v1 import AppTest

from core.lessons.loss import compute_loss
from core.models.checkpoints import load_trained_model, model_path, saved_run
from core.serving.runner import run_training

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


@pytest.mark.slow
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


@pytest.mark.slow
def test_training_view_fast_mode_only_where_offered_and_how_far_from_float32(monkeypatch):
    from core.runtime.precision import FORCE_ENV, bf16_unavailable

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
    # Stopped at once: the run still ends after its first step, whose evaluation gives the gap.
    at.button(key="train_stop").click().run()
    run.join(TIMEOUT)
    at.run()
    snap = run.snapshot()
    assert snap["error"] is None and snap["fast"] and snap["step"] == 1 and snap["bf16_gap"] is not None
    gap = snap["bf16_gap"]
    assert gap == run.result.state.bf16_gaps[-1]  # the child reported its last evaluation's gap
    assert f"bfloat16 on the same batches gave {gap[0]:+.4f} (training) and {gap[1]:+.4f}" in text_of(at)
    assert saved_run("app-fast")["hyperparameters"]["fast"] is True


def test_training_view_refuses_a_bad_or_taken_name():
    at = page("training")
    at.text_input(key="train_name_quick").set_value("../etc").run()
    assert not at.exception and "Model name" in text_of(at)


@pytest.mark.slow
def test_compare_view_matches_core_for_each_model(verdict_path):
    from dataclasses import replace

    from test_training import TINY

    run_training(
        replace(TINY, num_epochs=1), verdict_path.read_text(encoding="utf-8")[:6000], "cmp-tiny", log=None
    )
    at = page("compare")
    keys = at.multiselect(key="cmp_models").value
    assert "untrained-124m" in keys and "trained-cmp-tiny" in keys
    values = [m.value for m in at.metric]
    tiny = compute_loss(load_trained_model(model_path("cmp-tiny")), BOOK_TEXTS)
    assert "10.7940" in values and f"{float(tiny.loss):.4f}" in values


@pytest.mark.slow
def test_compare_reuses_the_dataset_views_result_for_a_trained_model(verdict_path):
    """One store and one key: a trained model's losses computed in the Dataset view appear in
    Compare without a second Compute, whatever the (unused) seed in the sidebar says."""
    from dataclasses import replace

    from test_training import TINY

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


def test_a_preset_too_big_for_the_servers_limit_is_offered_disabled_with_the_reason(monkeypatch):
    """A hosted demo's 2.7 GB beside a server of 1.1 GB: the book preset (its training process
    measured at 4.5 GB) cannot start, nor can its time estimate (real steps); the quick one can."""
    from core.models.presets import MARGIN_FRACTION, MARGIN_MIN_GB, PRESETS, child_peak_gb
    from core.runtime.memory import LIMIT_ENV, tree_rss

    at = page("training")  # the server's model is loaded
    # Left under the limit: the quick run's peak, the spare the server keeps (a tenth of a limit that
    # grows with this process's own size, which depends on the tests before) and 0.2 GB.
    rss, quick = tree_rss() / 2**30, child_peak_gb(PRESETS["quick"]) + 0.2
    free = max(quick + MARGIN_MIN_GB, (quick + MARGIN_FRACTION * rss) / (1 - MARGIN_FRACTION))
    monkeypatch.setenv(LIMIT_ENV, f"{int((rss + free) * 1024)}MB")
    at.run()
    assert "book (124M, section 5.2) · too big for this server" in at.radio(key="train_preset").options
    assert not at.button(key="train_start").disabled and not at.button(key="train_estimate").disabled
    at.radio(key="train_preset").set_value("book").run()
    assert not at.exception, at.exception
    assert at.button(key="train_start").disabled and at.button(key="train_estimate").disabled
    assert "Training the book preset needs about 4.5 GB of RAM at its peak" in text_of(at)
    assert "LOSSLENS_MEMORY_LIMIT" in text_of(at) and "python -m core train --preset book" in text_of(at)
    captions = " ".join(c.value for c in at.caption)
    assert "needs about 4.5 GB of RAM at its peak" in captions and "3.0 GB" not in captions
    assert "_train_run" not in at.session_state


@pytest.mark.slow
def test_a_run_stopped_after_one_step_says_so_and_keeps_its_preset():
    """ "Stopped after 1 step" (not "1 steps"), and the page comes back on the preset, epochs and
    name that ran, not on the quick preset's defaults."""
    at = page("training")
    at.radio(key="train_preset").set_value("book").run()
    at.number_input(key="train_epochs_book").set_value(3).run()
    at.text_input(key="train_name_book").set_value("one-step-book").run()
    at.button(key="train_start").click().run()
    assert not at.exception, at.exception
    run = at.session_state["_train_run"]
    at.button(key="train_stop").click().run()  # asked before its first step ends: it stops after it
    run.join(TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    assert run.snapshot()["step"] == 1
    assert "Stopped after 1 step and saved" in text_of(at)
    assert at.radio(key="train_preset").value == "book"
    assert at.number_input(key="train_epochs_book").value == 3
    assert at.text_input(key="train_name_book").value == "one-step-book"


def _restarted(run_name: str) -> AppTest:
    """The training page as a page that reconnects after a server restart opens it: its address
    still names the run, and the new server holds no run and no session."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.query_params["run"] = run_name
    at.switch_page("components/training.py").run()
    assert not at.exception, at.exception
    return at


def test_after_a_restart_a_run_never_saved_is_said_to_be_lost():
    at = _restarted("never-saved")
    assert "the run was lost before its first save. Start it again with Train." in text_of(at)
    assert "run" not in at.query_params  # said once: a later reload does not say it again


@pytest.mark.slow
def test_after_a_restart_a_run_with_a_save_offers_to_resume_it(verdict_path):
    from core.models.presets import get_preset

    run_training(
        get_preset("quick", num_epochs=3),
        verdict_path.read_text(encoding="utf-8"),
        "was-resumed",
        should_stop=lambda: True,  # stopped after its first step, saved: the run that resumed it was lost
        log=None,
    )
    at = _restarted("was-resumed")
    assert "Its last save, after 1 step, can be resumed: press Resume." in text_of(at)
    assert at.text_input(key="train_name_quick").value == "was-resumed"
    assert not at.button(key="train_resume").disabled


def test_after_a_restart_a_shared_servers_page_says_the_run_was_lost(monkeypatch):
    """On a shared server the page's models went with its old session: lost, without a guess
    about saves."""
    from core.runtime.deployment import SHARED_ENV

    monkeypatch.setenv(SHARED_ENV, "1")
    at = _restarted("shared-run")
    assert "“shared-run” was training, and the run was lost. Start it again with Train." in text_of(at)


@pytest.mark.slow
def test_the_estimate_is_timed_in_a_process_of_its_own():
    import os
    from pathlib import Path

    from core.runtime.memory import process_rss
    from core.serving.training_child import default_threads

    def children() -> set[int]:
        tasks = Path(f"/proc/{os.getpid()}/task").glob("*/children")
        return {int(c) for t in tasks for c in t.read_text().split()}

    at = page("training")
    before, rss = children(), process_rss()
    at.button(key="train_estimate").click().run()
    assert not at.exception, at.exception
    threads = default_threads()
    assert f"Measured on this machine ({threads} thread{'' if threads == 1 else 's'}): " in text_of(at)
    assert "9 steps per epoch" in text_of(at)  # the quick preset on The Verdict
    assert children() == before  # the estimate's process has ended
    assert process_rss() - rss < 200 * 2**20  # its model, optimizer and steps were never here
