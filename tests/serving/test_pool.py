"""The model pool: kept models are served at once during a storm of builds, builds run one at a
time in arrival order, and each waiting request hears its place in the queue."""

from __future__ import annotations

import gc
import sys
import threading
import time

from core.serving.pool import BUILD_NICE, BUILD_QUIET_S, ModelPool, describe_wait
from core.serving.priority import FOREGROUND, pause_point, thread_nice


class SlowLoads:
    """A load that takes `seconds` (or waits for `gate`) and records how many run at once."""

    def __init__(self, seconds: float = 0.3, gate: threading.Event | None = None):
        self.seconds, self.gate, self.lock = seconds, gate, threading.Lock()
        self.running = self.most = 0
        self.order: list[tuple] = []

    def __call__(self, key, seed):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.order.append((key, seed))
        if self.gate is not None and seed != 123:
            self.gate.wait(60)
        time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
        return {"model": key, "seed": seed}


def _until(condition, timeout: float = 30) -> None:
    t0 = time.monotonic()
    while not condition() and time.monotonic() - t0 < timeout:
        time.sleep(0.01)


def test_a_storm_of_builds_queues_one_at_a_time_and_never_stalls_a_kept_model():
    gate = threading.Event()  # the builds of the storm wait here until the checks are done
    loads = SlowLoads(0.05, gate)
    pool = ModelPool(loads, size=2, pinned=[("untrained", 123)])
    kept = pool.get("untrained", 123)  # the book's model, built before the storm
    heard: dict[int, list[int]] = {}
    threads = []
    for n, seed in enumerate(range(1, 6), 1):
        heard[seed] = []
        t = threading.Thread(
            target=pool.get, args=("untrained", seed), kwargs={"on_wait": heard[seed].append}
        )
        t.start()
        threads.append(t)
        _until(lambda n=n: pool.waiting() == n)  # arrival order 1, 2, 3, 4, 5
    _until(lambda: all(heard[s] for s in range(2, 6)))
    t0 = time.perf_counter()
    assert pool.get("untrained", 123) is kept  # served while seed 1's build is held: no waiting
    assert time.perf_counter() - t0 < 5
    assert pool.waiting() == 5 and loads.order == [("untrained", 123), ("untrained", 1)]
    gate.set()
    for t in threads:
        t.join(60)
    assert loads.most == 1  # never two builds at once
    assert loads.order == [("untrained", s) for s in (123, 1, 2, 3, 4, 5)]
    assert heard[1] == [] and heard[2][0] == 1 and heard[5][0] == 4  # each heard its place
    assert all(h == sorted(h, reverse=True) for h in heard.values())  # and it only came closer
    # The two newest are kept, and the pinned book model survived the storm: no rebuild for anyone.
    assert pool.kept("untrained", 5) and pool.kept("untrained", 4) and not pool.kept("untrained", 3)
    assert pool.get("untrained", 123) is kept and loads.order.count(("untrained", 123)) == 1


class Model:
    """Counts the instances alive, as the memory they would hold."""

    alive = 0

    def __init__(self):
        Model.alive += 1

    def __del__(self):
        Model.alive -= 1


def test_a_build_evicts_first_so_memory_never_holds_more_than_pinned_plus_size():
    peaks = []

    def load(key, seed):
        peaks.append(Model.alive)  # models alive while this one is built
        m = Model()
        m.niceness = thread_nice()
        return m

    pool = ModelPool(load, size=2, pinned=[("untrained", 123)])
    book = pool.get("untrained", 123)
    for seed in range(1, 8):
        assert pool.get("untrained", seed).niceness == (BUILD_NICE if sys.platform == "linux" else None)
    gc.collect()
    assert max(peaks) == 2  # the book's model and one kept: with the build, never more than 3
    assert Model.alive == 3  # the book's model and the two newest
    assert pool.get("untrained", 123) is book
    assert [pool.kept("untrained", s) for s in (5, 6, 7)] == [False, True, True]


def test_builds_run_below_the_visitors_priority_and_leave_their_thread_alone():
    seen = []
    before = thread_nice()
    pool = ModelPool(lambda key, seed: seen.append((threading.get_ident(), thread_nice())) or key)
    pool.get("a", 1)
    pool.get("b", 1)
    assert thread_nice() == before  # the caller's priority is untouched
    assert seen[0][0] != threading.get_ident() and seen[0][0] == seen[1][0]  # one builder thread
    if sys.platform == "linux":
        assert seen[0][1] == BUILD_NICE


class PausedLoads:
    """A build in `parts` parts with a pause point before each; records when each part starts."""

    def __init__(self, parts: int = 3):
        self.parts, self.starts = parts, []

    def __call__(self, key, seed):
        for _ in range(self.parts):
            pause_point()
            self.starts.append(time.monotonic())
        return {"model": key, "seed": seed}


def test_a_build_waits_for_other_visitors_in_quiet_moments_never_for_its_own(another_visitor_busy):
    FOREGROUND.shared()
    loads = PausedLoads()
    pool = ModelPool(loads, pause_s=30.0)
    with FOREGROUND.request():  # the visitor who asked: its request waits, so it is not busy
        t0 = time.monotonic()
        pool.get("a", 1)
    assert time.monotonic() - t0 < BUILD_QUIET_S + 2.0
    builder = threading.Thread(target=pool.get, args=("a", 2))
    with another_visitor_busy(FOREGROUND):
        builder.start()
        time.sleep(1.0)
        assert len(loads.starts) == 3  # seed 2's build has not begun: a visitor is busy
        ended = time.monotonic()
    builder.join(30)
    assert pool.kept("a", 2) and loads.starts[3] >= ended + BUILD_QUIET_S - 0.05  # after a quiet gap


def test_a_build_is_put_off_for_its_budget_at_most(another_visitor_busy):
    FOREGROUND.shared()
    loads = PausedLoads(parts=4)
    pool = ModelPool(loads, pause_s=0.5)
    with another_visitor_busy(FOREGROUND):  # busy for far longer than the budget
        t0 = time.monotonic()
        pool.get("a", 1)
        assert 0.4 <= time.monotonic() - t0 < 3.0 and len(loads.starts) == 4


def test_the_same_model_asked_twice_at_once_is_built_once():
    loads = SlowLoads(0.3)
    pool = ModelPool(loads, size=2)
    got = []
    threads = [threading.Thread(target=lambda: got.append(pool.get("gpt2", 0))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert loads.order == [("gpt2", 0)] and got[0] is got[1] is got[2]
    pool.forget(lambda key: key[0] == "gpt2")
    assert not pool.kept("gpt2", 0)


def test_a_failed_build_frees_the_queue():
    def fail(key, seed):
        raise ValueError("no weights")

    pool = ModelPool(fail)
    for _ in range(2):
        try:
            pool.get("gpt2", 0)
        except ValueError:
            pass
    assert pool.waiting() == 0


def test_the_waiting_message_says_why_and_what_to_do():
    text = describe_wait("Building the model for seed 7", 3)
    assert text.startswith("Building the model for seed 7; 3 requests ahead of you.")
    assert "one model at a time" in text and "pauses between other visitors" in text and "123" in text
    assert "1 request ahead" in describe_wait("Building the model for seed 7", 1)
