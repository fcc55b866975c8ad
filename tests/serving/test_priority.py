"""Background work yields to visitors: lower thread priority, and the count of visitors' requests
that a training child waits on between its steps."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from core.serving.priority import (
    Foreground,
    lower_thread_priority,
    pause_point,
    pausing,
    thread_nice,
    yield_to_foreground,
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priority is Linux's")
def test_lowering_a_threads_priority_leaves_the_others_alone():
    before, seen = thread_nice(), []

    def work():
        seen.append(lower_thread_priority(5))
        seen.append(thread_nice())

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [True, min(19, before + 5)] and thread_nice() == before


def test_requests_are_counted_once_a_shared_counter_exists():
    fg = Foreground()
    with fg.request():  # no training run asked yet: nothing to count, nothing allocated
        assert fg._state is None
    state = fg.shared()
    assert fg.shared() is state and state.count.value == 0 and state.ended.value == 0.0
    with fg.request():
        with fg.request():
            assert state.count.value == 2
    assert state.count.value == 0
    assert 0 <= time.monotonic() - state.ended.value < 1.0  # when the last one ended
    with pytest.raises(ValueError), fg.request():
        raise ValueError("a failed request still ends")
    assert state.count.value == 0


def test_a_request_that_waits_for_a_build_is_not_busy_meanwhile():
    fg = Foreground()
    with fg.waiting():  # no counter yet, no request on this thread: nothing to change
        assert fg._state is None
    state = fg.shared()
    with fg.request(), fg.request():  # app.py's request and compute_loss's within it
        with fg.waiting():
            assert state.count.value == 0 and not state.busy(0.0)
        assert state.count.value == 2
    with fg.waiting():  # a thread with no request of its own takes nothing off the count
        assert state.count.value == 0
    assert state.count.value == 0


def test_pause_points_wait_only_within_pausing_and_within_its_budget(another_visitor_busy):
    fg = Foreground()
    state = fg.shared()
    with another_visitor_busy(fg):
        t0 = time.monotonic()
        pause_point()  # outside pausing(): a no-op, whoever is busy
        assert time.monotonic() - t0 < 0.1
        t0 = time.monotonic()
        with pausing(state, budget_s=0.6, quiet_s=0.0):
            for _ in range(5):  # five parts of a build, with one budget for all of them
                pause_point()
        assert 0.5 <= time.monotonic() - t0 < 2.5  # 0.6 s in all, not 5 x 0.6
        took = []

        def another_thread():
            t1 = time.monotonic()
            pause_point()
            took.append(time.monotonic() - t1)

        with pausing(state, budget_s=5.0, quiet_s=0.0):
            other = threading.Thread(target=another_thread)
            other.start()  # pausing() is this thread's only: another thread's pause point goes on
            other.join(10)
        assert took and took[0] < 0.5


def test_yielding_waits_while_requests_run_and_never_longer_than_its_limit():
    fg = Foreground()
    state = fg.shared()
    assert yield_to_foreground(state, 5.0) < 0.5  # nobody has come: no pause
    with fg.request():
        assert 0.3 <= yield_to_foreground(state, 0.3) < 2.0  # bounded: training always advances

    def visitor():
        with fg.request():
            time.sleep(0.5)

    t = threading.Thread(target=visitor)
    t.start()
    time.sleep(0.1)
    waited = yield_to_foreground(state, 10.0, quiet_s=0.0)
    t.join()
    assert 0.2 < waited < 5.0  # until the request ended, not the 10 s limit


def test_yielding_waits_for_a_quiet_gap_after_the_last_request():
    fg = Foreground()
    state = fg.shared()
    with fg.request():
        pass
    waited = yield_to_foreground(state, 10.0, quiet_s=0.8)  # the next visitor may be close
    assert 0.6 < waited < 5.0 and time.monotonic() - state.ended.value >= 0.8

    def visitors():  # one after another, with gaps shorter than the quiet time
        for _ in range(4):
            with fg.request():
                time.sleep(0.1)
            time.sleep(0.2)

    t = threading.Thread(target=visitors)
    t.start()
    time.sleep(0.05)
    waited = yield_to_foreground(state, 10.0, quiet_s=0.5)
    t.join()
    # Through the gaps, until the last visitor (ended ~1.0 s in) had been gone 0.5 s; with no
    # quiet time it would have gone on in the first gap, 0.05 s in.
    assert 1.2 < waited < 5.0
