"""Lower OS priority for background work (model builds, training), so visitors' requests go first."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import threading
import time


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


class Foreground:
    """Visitors' requests in flight, counted where a training child can read it.

    A training run yields between its steps while the count is above zero (for at most a bound,
    so it always advances): the visitors' forward passes then don't share the memory bus and the
    caches with a training step. The shared counter exists once a training run has asked for it;
    until then counting costs nothing.
    """

    def __init__(self):
        self._count = None

    def shared(self):
        """The counter, created on first use (a multiprocessing Value: pass it to the child)."""
        if self._count is None:
            self._count = multiprocessing.get_context("spawn").Value("i", 0)
        return self._count

    @contextlib.contextmanager
    def request(self):
        count = self._count
        if count is None:
            yield
            return
        with count.get_lock():
            count.value += 1
        try:
            yield
        finally:
            with count.get_lock():
                count.value -= 1


FOREGROUND = Foreground()


def yield_to_foreground(count, limit_s: float, poll_s: float = 0.01) -> float:
    """Wait while `count` (Foreground.shared()) is above zero, at most `limit_s`; seconds waited."""
    t0 = time.monotonic()
    while count.value > 0 and time.monotonic() - t0 < limit_s:
        time.sleep(poll_s)
    return time.monotonic() - t0
