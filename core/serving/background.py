"""A training run in a child process, for a UI to poll and stop (core.serving.training_slot allows
one per server at a time).

The child runs at lower OS priority from birth, with its own torch thread count, and between
steps it waits while visitors' requests run; its memory goes back to the system when it ends.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable

from core.errors import ServerBusyError
from core.models.model_files import check_name
from core.models.presets import Preset
from core.serving.priority import FOREGROUND, lower_thread_priority
from core.serving.run_limits import RunLimits
from core.serving.runner import TrainingResult
from core.serving.training_child import EXIT_GRACE_S, NICE, YIELD_S, default_threads, train_in_child


class TrainingRun:
    """One training run in a child process, polled by a UI.

    The child runs at a lower OS priority (`nice`) with its own torch thread count, and between
    steps waits while visitors' requests run (at most `yield_s`), so the server's visitors keep
    their share of the CPU and the memory bus; its memory goes back to the system when it
    ends. A thread here reads its events into lists under a lock; the UI reads `snapshot()`.
    stop() asks the loop to end after the current step, and the run is saved and can be resumed
    with `TrainingRun(..., resume=True)`; a child that has not ended `grace_s` seconds later is
    terminated, then killed.
    """

    def __init__(
        self,
        preset: Preset,
        text: str,
        name: str,
        resume: bool = False,
        device="cpu",
        threads: int | None = None,
        nice: int = NICE,
        grace_s: float = 120.0,
        yield_s: float = YIELD_S,
        owner: str | None = None,
        limits: RunLimits | None = None,
    ):
        self.preset, self.text, self.name, self.resume = preset, text, check_name(name), resume
        self.owner = owner  # None: a local server's run, everybody's as before
        self.limits = limits or RunLimits()
        self.device, self.threads = str(device), threads or default_threads()
        self.nice, self.grace_s = nice, grace_s
        target_nice = min(19, os.nice(0) + nice)  # the child's nice value: `nice` below this thread's
        self._lock, self._end_lock = threading.Lock(), threading.Lock()
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no copy of the server's threads
        self._events = ctx.Queue()
        self._stop = ctx.Event()
        self._proc = ctx.Process(
            target=train_in_child,
            name=f"losslens-train-{self.name}",
            daemon=True,
            args=(
                preset,
                text,
                self.name,
                resume,
                self.device,
                self.threads,
                target_nice,
                self._events,
                self._stop,
                os.getpid(),
                FOREGROUND.shared(),
                yield_s,
                owner,
                self.limits.max_steps,
            ),
        )
        self.evals: list[dict] = []
        self.samples: list[tuple[int, str]] = []
        self.step = 0
        self.total_steps: int | None = None
        self.result: TrainingResult | None = None
        self.error: str | None = None
        self.bf16_gap: list[float] | None = None
        self.child: dict = {}
        self.started_at: float | None = None
        self.stop_reason: str | None = None  # "visitor", "abandoned", "steps", "time"
        self.peak_mb: float | None = None  # the child's peak resident memory, reported at its end
        self._seen = time.monotonic()  # the owner's last sign of life
        self._probe: Callable[[], bool | None] | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def start(self) -> TrainingRun:
        self.started_at = time.time()
        # Started from a thread of lower priority, the child is born with it (Linux): even its
        # imports, seconds of CPU, wait for the visitors' requests.
        failed: list[BaseException] = []
        starter = threading.Thread(target=self._start_child, args=(failed,), name="losslens-train-start")
        starter.start()
        starter.join()
        if failed:
            raise failed[0]
        self._reader = threading.Thread(target=self._read, name=f"losslens-train-{self.name}", daemon=True)
        self._reader.start()
        return self

    def _start_child(self, failed: list[BaseException]) -> None:
        try:
            lower_thread_priority(self.nice)
            self._proc.start()
        except BaseException as e:  # raised again in start()
            failed.append(e)

    def touch(self) -> None:
        """The owner's page is there (a script run or the live fragment's poll)."""
        self._seen = time.monotonic()

    def watch(self, probe: Callable[[], bool | None]) -> None:
        """`probe()` says whether the owner's page is still connected (None: cannot tell);
        asked between the owner's touches."""
        self._probe = probe

    def owned_by(self, owner: str | None) -> bool:
        return self.owner is None or self.owner == owner

    def _police(self) -> None:
        """Stop a run whose owner has gone for longer than the grace period, or that has used
        its time; called by the reader thread several times a second."""
        if self._stop.is_set():
            return
        now = time.monotonic()
        if self.owner is not None and self.limits.orphan_grace_s is not None:
            if self._probe is not None:
                try:
                    if self._probe():
                        self._seen = now
                except Exception:  # a probe that fails says nothing
                    pass
            if now - self._seen > self.limits.orphan_grace_s:
                self.stop("abandoned")
                return
        if self.limits.max_wall_s is not None and self.started_at is not None:
            if time.time() - self.started_at > self.limits.max_wall_s:
                self.stop("time")

    def stop(self, reason: str = "visitor", owner: str | None = None) -> None:
        """End the run after its current step (saved, resumable); for certain after grace_s.
        A visitor's Stop (`owner` given) counts only from the run's owner."""
        if reason == "visitor" and owner is not None and not self.owned_by(owner):
            raise ServerBusyError("This training run belongs to another visitor; only they can stop it.")
        if self._stop.is_set():
            return
        with self._lock:
            self.stop_reason = reason
        self._stop.set()
        threading.Thread(target=self._end_for_certain, daemon=True).start()

    def _end_for_certain(self) -> None:
        self._proc.join(self.grace_s)
        self._end_now()

    def _end_now(self) -> None:
        with self._end_lock:  # the reader and a Stop may both end it
            self._end_child()

    def _end_child(self) -> None:
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(EXIT_GRACE_S)
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join()

    @property
    def running(self) -> bool:
        return self._reader is not None and self._reader.is_alive()

    def join(self, timeout: float | None = None) -> None:
        if self._reader:
            self._reader.join(timeout)

    def _read(self) -> None:
        done = False
        while not done:
            try:
                kind, value = self._events.get(timeout=0.2)
            except queue.Empty:
                if self._proc.is_alive():
                    self._police()
                    continue
                try:  # the child has ended: take what it sent last
                    kind, value = self._events.get(timeout=1.0)
                except queue.Empty:
                    break
            done = kind in ("result", "error")
            with self._lock:
                if kind in ("started", "total_steps", "step", "result", "error", "bf16_gap"):
                    setattr(self, {"started": "child"}.get(kind, kind), value)
                elif kind == "eval":
                    self.evals.append(value)
                elif kind == "sample":
                    self.samples.append(value)
                elif kind == "stop_reason":
                    self.stop_reason = self.stop_reason or value
                elif kind == "peak_mb":
                    self.peak_mb = value
            if kind == "step":
                self._police()
        self._proc.join(EXIT_GRACE_S)  # saved and reported: a child slow to exit is not waited for
        self._end_now()
        self._events.close()
        with self._lock:
            if self.result is None and self.error is None:
                self.error = (
                    f"The training process ended without saving (exit code {self._proc.exitcode}); "
                    "it was stopped by force or ran out of memory. Start it again, or Resume an "
                    "earlier stop."
                )

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "name": self.name,
                "preset": self.preset.name,
                "fast": self.preset.fast,
                "bf16_gap": self.bf16_gap,
                "step": self.step,
                "total_steps": self.total_steps,
                "evals": list(self.evals),
                "samples": list(self.samples),
                "running": self.running,
                "stopping": self._stop.is_set(),
                "finished": self.result is not None and self.result.finished,
                "stopped": self.result is not None and not self.result.finished,
                "error": self.error,
                "path": str(self.result.path) if self.result else None,
                "elapsed_s": (time.time() - self.started_at) if self.started_at else 0.0,
                "child": dict(self.child),
                "stop_reason": self.stop_reason,
                "peak_mb": self.peak_mb,
                "max_steps": self.limits.max_steps,
                "max_wall_s": self.limits.max_wall_s,
                "orphan_grace_s": self.limits.orphan_grace_s,
            }
