"""The one training run a server allows at a time, and the time estimate that takes the slot too
(its real steps run in a child, never in the server's memory)."""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time

from core.errors import InvalidParameterError, ServerBusyError
from core.models.presets import Preset, check_training_memory
from core.serving.background import TrainingRun
from core.serving.run_limits import RunLimits
from core.serving.training_child import EXIT_GRACE_S, NICE, default_threads, estimate_in_child


class TrainingSlot:
    """The one training run a server allows at a time (training takes most of its cores and
    much of its memory); the time estimate, which runs real steps in a child, takes it too."""

    def __init__(self, limits: RunLimits | None = None, **run_options):
        self._lock = threading.Lock()
        self._options = run_options  # for TrainingRun: threads, nice, grace_s, yield_s
        self.limits = limits  # None: read from the environment at each start
        self.run: TrainingRun | None = None
        self._estimating = False

    def check_free(self) -> None:
        """ServerBusyError while a run or an estimate holds the slot."""
        if self._estimating:
            raise ServerBusyError(
                "This server is timing a few training steps for another visitor; try again in a minute."
            )
        other = self.run
        if other is not None and other.running:
            snap = other.snapshot()
            done = f"step {snap['step']} of {snap['total_steps']}" if snap["total_steps"] else "starting"
            raise ServerBusyError(
                f"Another visitor's training run ({snap['preset']} preset, {done}) is using this server: "
                "it trains one model at a time so that everyone's views stay quick. Start yours when it "
                "has finished, or train on your own machine with `python -m core train`."
            )

    def start(
        self,
        preset: Preset,
        text: str,
        name: str,
        resume: bool = False,
        device="cpu",
        owner: str | None = None,
    ) -> TrainingRun:
        """Start `owner`'s run (None on a local server), after the memory check: the child's
        measured peak must fit beside the server under this host's limit."""
        with self._lock:
            self.check_free()
            check_training_memory(preset, device)
            limits = self.limits or RunLimits.from_env()
            self.run = TrainingRun(
                preset, text, name, resume=resume, device=device, owner=owner, limits=limits, **self._options
            ).start()
            return self.run

    def current(self, owner: str | None) -> TrainingRun | None:
        """The run going now if it is `owner`'s (on a local server, whoever's it is)."""
        run = self.run
        return run if run is not None and run.running and run.owned_by(owner) else None

    def estimate(self, preset: Preset, text: str, device="cpu", timeout: float = 600.0) -> dict:
        """core.models.presets.estimate_time in a child process at training's priority and thread count:
        its real steps take a run's memory, which the server itself must never hold."""
        with self._lock:
            self.check_free()
            check_training_memory(preset, device)
            self._estimating = True
        try:
            return _run_estimate(preset, text, str(device), self._options.get("threads"), timeout)
        finally:
            with self._lock:
                self._estimating = False


def _run_estimate(preset: Preset, text: str, device: str, threads: int | None, timeout: float) -> dict:
    ctx = multiprocessing.get_context("spawn")
    events = ctx.Queue()
    nice = min(19, os.nice(0) + NICE)
    proc = ctx.Process(
        target=estimate_in_child,
        name="losslens-estimate",
        daemon=True,
        args=(preset, text, device, threads or default_threads(), nice, events, os.getpid()),
    )
    proc.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                kind, value = events.get(timeout=0.5)
            except queue.Empty:
                if not proc.is_alive() or time.monotonic() > deadline:
                    raise ServerBusyError(
                        "The time estimate's process ended without an answer (it ran out of memory or "
                        "time); try again later."
                    ) from None
                continue
            if kind == "result":
                return value
            if kind == "error":
                raise InvalidParameterError(f"The time estimate failed: {value}")
    finally:
        proc.join(EXIT_GRACE_S)
        if proc.is_alive():
            proc.kill()
            proc.join()
        events.close()
