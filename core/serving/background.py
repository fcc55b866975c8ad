"""A training run in a child process, for a UI to poll and stop; one run per server at a time.

The child runs at lower OS priority from birth, with its own torch thread count, and between
steps it waits while visitors' requests run; its memory goes back to the system when it ends.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.spawn
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from core.errors import InvalidParameterError, LossLensError, ServerBusyError
from core.models.checkpoints import check_name
from core.models.presets import Preset, check_training_memory, estimate_time
from core.models.training import make_train_loaders
from core.runtime.deployment import shared_server
from core.runtime.memory import process_rss
from core.serving.priority import FOREGROUND, lower_thread_priority, yield_to_foreground
from core.serving.runner import TrainingResult, run_training

EVAL_FIELDS = ("step", "tokens_seen", "train_loss", "val_loss")
EXIT_GRACE_S = 10.0  # a child that has saved and reported, or been terminated, gets this long to exit
NICE = int(os.environ.get("LOSSLENS_TRAIN_NICE", "10"))  # how much lower the training child's priority is
# The longest a training child waits, between two steps, for a quiet moment among visitors'
# requests (priority.QUIET_S): visitors go first, and a server busy without a pause still trains
# at least one step per this long.
YIELD_S = 10.0
MAX_STEPS_ENV = "LOSSLENS_MAX_STEPS"  # steps one run may take before it stops and saves
MAX_TRAIN_ENV = "LOSSLENS_MAX_TRAIN_S"  # seconds one run may take before it stops and saves
GRACE_ENV = "LOSSLENS_ORPHAN_GRACE_S"  # how long a run outlives its visitor's closed page
# A shared server's defaults: a book run (90 steps, 10 epochs) fits; 100 epochs of it does not.
SHARED_MAX_STEPS, SHARED_MAX_TRAIN_S, ORPHAN_GRACE_S = 200, 30 * 60.0, 90.0


def _env_number(name: str, default: float | None, kind=float) -> float | None:
    """A positive number from the environment; 0 or "none" means no cap."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("0", "none", "off"):
        return None
    try:
        value = kind(raw)
    except ValueError:
        value = -1
    if value <= 0:
        raise InvalidParameterError(f"{name}={raw!r}: write a positive number, or 0 for no limit.")
    return value


@dataclass(frozen=True)
class RunLimits:
    """What one run may take on this server; None is no limit.

    `max_steps` and `max_wall_s` stop a run (saved, resumable) so that the one training slot
    goes round; `orphan_grace_s` stops a run whose visitor's page has been gone that long."""

    max_steps: int | None = None
    max_wall_s: float | None = None
    orphan_grace_s: float | None = ORPHAN_GRACE_S

    @classmethod
    def from_env(cls, shared: bool | None = None) -> RunLimits:
        """The caps for this server: generous on a shared one, none on a local one, each
        overridden by its environment variable."""
        shared = shared_server() if shared is None else shared
        steps = _env_number(MAX_STEPS_ENV, SHARED_MAX_STEPS if shared else None, int)
        wall = _env_number(MAX_TRAIN_ENV, SHARED_MAX_TRAIN_S if shared else None)
        return cls(steps, wall, _env_number(GRACE_ENV, ORPHAN_GRACE_S))


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (VmHWM), in MB."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return process_rss() / 2**20


CHILD_PREFIX = "losslens-"  # the names of this module's child processes
# The standard function, even when this module is imported again (Streamlit reloads modules).
_PREPARATION_DATA = getattr(
    multiprocessing.spawn.get_preparation_data, "__wrapped__", multiprocessing.spawn.get_preparation_data
)


def _preparation_data(name: str) -> dict:
    """What a spawned child is told to import first, less the parent's main module for this
    module's children: under `streamlit run` that is the app's script, which would run again in
    the child, without a session (a warning per Streamlit call) and with a model of its own."""
    data = _PREPARATION_DATA(name)
    if name.startswith(CHILD_PREFIX):
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
    return data


_preparation_data.__wrapped__ = _PREPARATION_DATA
multiprocessing.spawn.get_preparation_data = _preparation_data


def default_threads() -> int:
    """Threads for a training child: all but one core, so visitors keep one to themselves."""
    return max(1, (os.cpu_count() or 2) - 1)


def _end_with_parent(parent: int) -> None:
    """A server killed outright runs no clean-up: its training child notices, and ends too."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _child(
    preset, text, name, resume, device, threads, nice, events, stop, parent, foreground, yield_s,
    owner=None, max_steps=None,
) -> None:  # fmt: skip
    """The training process: lower priority, its own thread count; reports through `events`.
    Between steps it waits while visitors are busy (`foreground`, a SharedForeground), at most
    `yield_s`. It stops by itself after `max_steps` steps (None: no cap), saved as a Stop is."""
    threading.Thread(target=_end_with_parent, args=(parent,), daemon=True).start()
    torch.set_num_threads(threads)
    yield_to_foreground(foreground, yield_s)  # the imports are done; the warm-up and set-up wait too
    w = torch.zeros(1, requires_grad=True)  # AdamW's first step imports torch._dynamo (seconds of CPU):
    w.sum().backward()  # done before the run reports that it started
    torch.optim.AdamW([w]).step()
    os.nice(max(0, nice - os.nice(0)))  # on Linux the child was born at this nice value already
    events.put(("started", {"pid": os.getpid(), "nice": os.nice(0), "threads": torch.get_num_threads()}))

    steps = [0]

    def on_step(state) -> None:
        steps[0] += 1
        events.put(("step", state.global_step + 1))
        if state.bf16_gaps:  # a fast run: how far bfloat16 was at the last evaluation
            events.put(("bf16_gap", state.bf16_gaps[-1]))
        yield_to_foreground(foreground, yield_s)  # visitors first: the next step waits for them

    try:
        yield_to_foreground(foreground, yield_s)
        steps_per_epoch = len(make_train_loaders(text, preset.settings)[0])
        events.put(("total_steps", steps_per_epoch * preset.num_epochs))
        result = run_training(
            preset,
            text,
            name,
            resume=resume,
            device=device,
            log=None,
            should_stop=lambda: stop.is_set() or (max_steps is not None and steps[0] >= max_steps),
            on_eval=lambda *e: events.put(("eval", dict(zip(EVAL_FIELDS, e, strict=True)))),
            on_sample=lambda epoch, sample: events.put(("sample", (epoch, sample))),
            on_step=on_step,
            owner=owner,
        )
        if not stop.is_set() and result.state.stopped:
            events.put(("stop_reason", "steps"))
        events.put(("peak_mb", peak_rss_mb()))
        state = replace(result.state, rng_now=None, rng_epoch_start=None)  # small to send back
        events.put(("result", replace(result, state=state)))
    except Exception as e:  # shown in the UI as a message, never lost in a process
        events.put(("peak_mb", peak_rss_mb()))
        events.put(("error", error_words(e)))


def error_words(e: BaseException) -> str:
    """What the page shows for a child's failure: LossLens's own errors are written for people;
    anything else keeps its type, which is what makes it understandable."""
    return str(e) if isinstance(e, LossLensError) else f"{type(e).__name__}: {e}"


def _estimate_child(preset, text, device, threads, nice, events, parent) -> None:
    """The time estimate's process: real training steps, so never in the server's own memory."""
    threading.Thread(target=_end_with_parent, args=(parent,), daemon=True).start()
    torch.set_num_threads(threads)
    os.nice(max(0, nice - os.nice(0)))
    try:
        events.put(("result", estimate_time(preset, text, device=device)))
    except Exception as e:
        events.put(("error", error_words(e)))
    events.put(("peak_mb", peak_rss_mb()))


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
            target=_child,
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
        target=_estimate_child,
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
