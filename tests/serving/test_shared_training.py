"""A training run belongs to its visitor on a shared server: it stops and saves when their page has
gone, at the server's step and time caps, only they can stop it, and the time estimate runs in a
child process, never in the server's memory. Real training children, a tiny model."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from test_training import TINY

from core.errors import InvalidParameterError, ServerBusyError
from core.models.checkpoints import is_resumable, model_path, saved_run
from core.runtime.deployment import SHARED_ENV
from core.runtime.memory import LIMIT_ENV, tree_rss
from core.serving.background import TrainingRun
from core.serving.run_limits import GRACE_ENV, MAX_STEPS_ENV, MAX_TRAIN_ENV, RunLimits
from core.serving.training_slot import TrainingSlot

OWNER, OTHER = "a1b2c3d4e5f60718", "ffffeeeeddddcccc"
LONG = replace(TINY, num_epochs=500)


@pytest.fixture(scope="module")
def text(verdict_path):
    return verdict_path.read_text(encoding="utf-8")[:8000]


def _wait(run: TrainingRun, deadline: float = 240) -> dict:
    run.join(deadline)
    assert not run.running
    return run.snapshot()


def _wait_for_step(run, step: int, deadline: float = 180) -> None:
    t0 = time.time()
    while run.snapshot()["step"] < step and run.running and time.time() - t0 < deadline:
        time.sleep(0.05)


@pytest.mark.slow
def test_an_abandoned_run_stops_and_saves_after_the_grace_period(text):
    run = TrainingRun(LONG, text, "left", nice=1, owner=OWNER, limits=RunLimits(orphan_grace_s=3.0)).start()
    t0 = time.monotonic()
    snap = _wait(run)
    assert snap["stop_reason"] == "abandoned" and snap["stopped"] and snap["error"] is None
    assert 3.0 <= time.monotonic() - t0 < 120
    assert 1 <= snap["step"] < snap["total_steps"]
    assert is_resumable("left", owner=OWNER) and not is_resumable("left")  # saved in its owner's folder


@pytest.mark.slow
def test_a_run_whose_page_polls_or_whose_session_is_connected_goes_on(text):
    run = TrainingRun(
        LONG, text, "watched", nice=1, owner=OWNER, limits=RunLimits(orphan_grace_s=1.5)
    ).start()
    t_end = time.monotonic() + 5
    while time.monotonic() < t_end:  # the live fragment's polls
        run.touch()
        time.sleep(0.3)
    assert run.running and run.snapshot()["stop_reason"] is None
    connected = [True]
    run.watch(lambda: connected[0])  # the session is connected: no polls needed
    time.sleep(4)
    assert run.running
    connected[0] = False  # the tab is closed
    snap = _wait(run)
    assert snap["stop_reason"] == "abandoned" and snap["stopped"]


@pytest.mark.slow
def test_a_local_servers_run_is_nobodys_to_abandon(text):
    run = TrainingRun(LONG, text, "local", nice=1, limits=RunLimits(orphan_grace_s=0.5)).start()
    _wait_for_step(run, 1)
    time.sleep(3)
    assert run.running and run.snapshot()["stop_reason"] is None
    run.stop()
    assert _wait(run)["stop_reason"] == "visitor"


@pytest.mark.slow
def test_the_step_cap_stops_a_run_saved_and_resumable(text):
    run = TrainingRun(LONG, text, "capped", nice=1, owner=OWNER, limits=RunLimits(max_steps=3)).start()
    run.touch()
    snap = _wait(run)
    assert snap["step"] == 3 and snap["stop_reason"] == "steps" and snap["stopped"]
    assert saved_run("capped", owner=OWNER)["state"]["global_step"] == 2  # the book's counter: 3 steps
    # Resumed, it has the cap again from where it was.
    again = TrainingRun(
        LONG, text, "capped", resume=True, nice=1, owner=OWNER, limits=RunLimits(max_steps=2)
    ).start()
    snap = _wait(again)
    assert snap["step"] == 5 and snap["stop_reason"] == "steps"


@pytest.mark.slow
def test_the_time_cap_stops_a_run(text):
    run = TrainingRun(LONG, text, "timed", nice=1, limits=RunLimits(max_wall_s=4.0)).start()
    t0 = time.monotonic()
    snap = _wait(run)
    assert snap["stop_reason"] == "time" and snap["stopped"] and snap["step"] >= 1
    assert 4.0 <= time.monotonic() - t0 < 120
    assert model_path("timed").is_file()


@pytest.mark.slow
def test_only_the_owner_stops_it_and_others_see_the_queue_without_its_name(text):
    slot = TrainingSlot(nice=1, limits=RunLimits())
    run = slot.start(LONG, text, "private-name", owner=OWNER)
    run.touch()
    assert slot.current(OWNER) is run and slot.current(OTHER) is None
    with pytest.raises(ServerBusyError, match="belongs to another visitor"):
        run.stop(owner=OTHER)
    assert not run.snapshot()["stopping"]
    with pytest.raises(ServerBusyError) as e:
        slot.start(TINY, text, "mine", owner=OTHER)
    assert "Another visitor's training run (tiny preset" in str(e.value)
    assert "private-name" not in str(e.value) and OWNER not in str(e.value)
    run.stop(owner=OWNER)
    assert _wait(run)["stop_reason"] == "visitor"


def test_limits_from_the_environment(monkeypatch):
    for env in (SHARED_ENV, MAX_STEPS_ENV, MAX_TRAIN_ENV, GRACE_ENV):
        monkeypatch.delenv(env, raising=False)
    assert RunLimits.from_env() == RunLimits(None, None, 90.0)  # a local server: no caps
    monkeypatch.setenv(SHARED_ENV, "1")
    assert RunLimits.from_env() == RunLimits(200, 1800.0, 90.0)  # a book run (90 steps) fits
    monkeypatch.setenv(MAX_STEPS_ENV, "50")
    monkeypatch.setenv(MAX_TRAIN_ENV, "0")
    monkeypatch.setenv(GRACE_ENV, "120")
    assert RunLimits.from_env() == RunLimits(50, None, 120.0)
    monkeypatch.setenv(GRACE_ENV, "0")
    assert RunLimits.from_env().orphan_grace_s is None  # a closed page's run goes on
    monkeypatch.setenv(MAX_STEPS_ENV, "-3")
    with pytest.raises(InvalidParameterError, match="LOSSLENS_MAX_STEPS='-3': write a positive number"):
        RunLimits.from_env()


def _children() -> list[int]:
    return [
        int(c) for t in Path(f"/proc/{os.getpid()}/task").glob("*/children") for c in t.read_text().split()
    ]


@pytest.mark.slow
def test_the_estimate_runs_in_a_child_process_that_holds_the_slot(text):
    slot = TrainingSlot(nice=1)
    before = set(_children())
    result, seen = {}, {"children": set(), "busy": None}

    def estimate() -> None:
        result.update(slot.estimate(TINY, text))

    thread = threading.Thread(target=estimate)
    thread.start()
    while thread.is_alive():
        seen["children"] |= set(_children()) - before
        if seen["busy"] is None:
            try:
                slot.start(TINY, text, "during-estimate")
            except ServerBusyError as e:
                seen["busy"] = str(e)
        time.sleep(0.05)
    thread.join()
    assert seen["children"], "the estimate ran in this process"
    assert "timing a few training steps" in seen["busy"]
    assert result["step_s"] > 0 and result["steps_per_epoch"] >= 1 and result["threads"] >= 1
    run = slot.start(TINY, text, "after-estimate")  # the slot is free again
    run.stop()
    _wait(run)


def test_a_run_that_would_not_fit_under_the_limit_starts_no_child(text, monkeypatch):
    from core.models.presets import PRESETS

    monkeypatch.setenv(LIMIT_ENV, f"{tree_rss() // 2**20 + 1600}MB")
    slot = TrainingSlot(nice=1)
    before = set(_children())
    with pytest.raises(InvalidParameterError, match="Training the book preset needs about 4.5 GB of RAM"):
        slot.start(PRESETS["book"], text, "too-big")
    with pytest.raises(InvalidParameterError, match="Training the book preset needs about 4.5 GB of RAM"):
        slot.estimate(PRESETS["book"], text)
    assert set(_children()) == before and slot.run is None


def test_the_estimate_sentence_counts_one_thread_in_the_singular():
    from core.models.presets import describe_estimate

    e = {"preset": "quick", "threads": 1, "step_s": 2.73, "steps_per_epoch": 9, "epoch_s": 29.4}
    e |= {"total_s": 234.0, "num_epochs": 8}
    assert describe_estimate(e).startswith("Measured on this machine (1 thread): 2.73 s per training step")
    assert "(3 threads)" in describe_estimate(e | {"threads": 3})


@pytest.mark.slow
def test_a_childs_failure_reads_as_its_message_without_a_type_name(text, monkeypatch):
    # The disk's reserve set beyond any disk: the child's check before training refuses, in words.
    monkeypatch.setenv("LOSSLENS_DISK_RESERVE_MB", str(10**12))
    snap = _wait(TrainingRun(TINY, text, "no-room", nice=1, owner=OWNER).start())
    assert snap["error"].startswith("The disk is nearly full") and "StorageError" not in snap["error"]
    assert not model_path("no-room", owner=OWNER).exists()
