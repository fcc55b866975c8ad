"""Lower OS priority for background work (model builds, training), so visitors' requests go first."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

# A training child goes on once no visitor's request has run for this long (yield_to_foreground).
QUIET_S = 1.0
_local = threading.local()  # per thread: its requests counted (depth), and pausing()'s budget (pause)


def lower_thread_priority(by: int) -> bool:
    """Lower the calling thread's priority: its nice value goes up by `by` (at most to 19).

    On Linux each thread has its own nice value, and a process started from this thread is born
    with it. Returns False where the OS has no per-thread priority (macOS, Windows): the work then
    runs at the process's priority.
    """
    if by <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))
        return True
    except OSError:  # a sandbox that forbids it: same results, only less fair
        return False


def thread_nice() -> int | None:
    """The calling thread's nice value (Linux); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@dataclass(frozen=True)
class SharedForeground:
    """Visitors' requests, in shared memory a training child can read (pass it to the child)."""

    count: Any  # multiprocessing Value("i"): requests in flight
    ended: Any  # Value("d"): time.monotonic() when the last one ended (one clock for all processes)

    def busy(self, quiet_s: float) -> bool:
        """A request runs, or one ended less than `quiet_s` ago (the next visitor is likely close)."""
        return self.count.value > 0 or time.monotonic() - self.ended.value < quiet_s


class Foreground:
    """Visitors' requests in flight, counted where a training child can read it.

    A training run yields between its steps while visitors are busy (for at most a bound, so it
    always advances), and so does each part of a model build (`pausing`): the visitors' forward
    passes then don't share the CPU, the memory bus and the caches with them. The shared state
    exists once a training run or a build has asked for it; until then counting costs nothing.
    """

    def __init__(self):
        self._state: SharedForeground | None = None
        self._lock = threading.Lock()  # a build and a training run may ask at once

    def shared(self) -> SharedForeground:
        """The shared state, created on first use."""
        with self._lock:
            if self._state is None:
                ctx = multiprocessing.get_context("spawn")
                self._state = SharedForeground(ctx.Value("i", 0), ctx.Value("d", 0.0, lock=False))
            return self._state

    @contextlib.contextmanager
    def request(self):
        state = self._state
        if state is None:
            yield
            return
        with state.count.get_lock():
            state.count.value += 1
        _local.depth = getattr(_local, "depth", 0) + 1
        try:
            yield
        finally:
            _local.depth -= 1
            with state.count.get_lock():
                state.count.value -= 1
                state.ended.value = time.monotonic()

    @contextlib.contextmanager
    def waiting(self):
        """Within, this thread's request waits for background work (its model's build) and uses no
        CPU: it does not count as busy, or the build would wait for the very visitor it serves."""
        state, depth = self._state, getattr(_local, "depth", 0)
        if state is None or depth == 0:
            yield
            return
        with state.count.get_lock():
            state.count.value -= depth
        try:
            yield
        finally:
            with state.count.get_lock():
                state.count.value += depth


FOREGROUND = Foreground()


def yield_to_foreground(
    state: SharedForeground, limit_s: float, quiet_s: float = QUIET_S, poll_s: float = 0.01
) -> float:
    """Wait while visitors are busy (`SharedForeground.busy`), at most `limit_s`; seconds waited.

    Why a quiet gap and not just "no request now": in a room of visitors the requests come one
    after another with short gaps, and a step started in such a gap runs for seconds beside the
    next visitors. An idle server has no recent request, so the child goes on at once.
    """
    t0 = time.monotonic()
    while state.busy(quiet_s) and time.monotonic() - t0 < limit_s:
        time.sleep(poll_s)
    return time.monotonic() - t0


def pause_point() -> None:
    """A point where background work on this thread may wait for visitors (see `pausing`): between
    the parts of a model build. A no-op on every other thread."""
    pause = getattr(_local, "pause", None)
    if pause is not None:
        pause()


@contextlib.contextmanager
def pausing(state: SharedForeground, budget_s: float, quiet_s: float = QUIET_S):
    """Within, each pause_point() on this thread waits while visitors are busy, `budget_s` in all.

    Why: a model build is seconds of CPU, and a lower OS priority alone did not keep it off the
    visitors' way on two cores (a storm of ten builds made other visitors' p95 up to 9x slower). Made
    of parts of ~0.1-0.4 s that each start only in a quiet moment, it leaves the CPU to visitors;
    the budget bounds how long a build can be put off, so every build finishes."""
    left = budget_s

    def pause() -> None:
        nonlocal left
        if left > 0:
            left -= yield_to_foreground(state, left, quiet_s)

    previous = getattr(_local, "pause", None)
    _local.pause = pause
    try:
        yield
    finally:
        _local.pause = previous
