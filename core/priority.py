"""Lower OS priority for background work (model builds, training), so visitors' requests go first."""

from __future__ import annotations

import os
import sys
import threading


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
    """The calling thread's nice value (Linux), for tests and the UI."""
    if not sys.platform.startswith("linux"):
        return None
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
