"""A training run in a child process, for a UI to poll and stop; one run per server at a time.

The child runs at lower OS priority from birth, with its own torch thread count, and between
steps it waits while visitors' requests run; its memory goes back to the system when it ends.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
from dataclasses import replace

import torch

from .checkpoints import check_name
from .errors import ServerBusyError
from .presets import Preset
from .priority import FOREGROUND, lower_thread_priority, yield_to_foreground
from .runner import TrainingResult, run_training
from .train import make_train_loaders

EVAL_FIELDS = ("step", "tokens_seen", "train_loss", "val_loss")
EXIT_GRACE_S = 10.0  # a child that has saved and reported, or been terminated, gets this long to exit
NICE = int(os.environ.get("LOSSLENS_TRAIN_NICE", "10"))  # how much lower the training child's priority is
# The longest a training child waits, between two steps, for a quiet moment among visitors'
# requests (priority.QUIET_S): visitors go first, and a server busy without a pause still trains
# at least one step per this long.
YIELD_S = 10.0


def default_threads() -> int:
    """Threads for a training child: all but one core, so visitors keep one to themselves."""
    return max(1, (os.cpu_count() or 2) - 1)


def _end_with_parent(parent: int) -> None:
    """A server killed outright runs no clean-up: its training child notices, and ends too."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _child(
    preset, text, name, resume, device, threads, nice, events, stop, parent, foreground, yield_s
) -> None:
    """The training process: lower priority, its own thread count; reports through `events`.
    Between steps it waits while visitors are busy (`foreground`, a SharedForeground), at most
    `yield_s`."""
    threading.Thread(target=_end_with_parent, args=(parent,), daemon=True).start()
    torch.set_num_threads(threads)
    yield_to_foreground(foreground, yield_s)  # the imports are done; the warm-up and set-up wait too
    w = torch.zeros(1, requires_grad=True)  # AdamW's first step imports torch._dynamo (seconds of CPU):
    w.sum().backward()  # done before the run reports that it started
    torch.optim.AdamW([w]).step()
    os.nice(max(0, nice - os.nice(0)))  # on Linux the child was born at this nice value already
    events.put(("started", {"pid": os.getpid(), "nice": os.nice(0), "threads": torch.get_num_threads()}))

    def on_step(state) -> None:
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
            should_stop=stop.is_set,
            on_eval=lambda *e: events.put(("eval", dict(zip(EVAL_FIELDS, e, strict=True)))),
            on_sample=lambda epoch, sample: events.put(("sample", (epoch, sample))),
            on_step=on_step,
        )
        state = replace(result.state, rng_now=None, rng_epoch_start=None)  # small to send back
        events.put(("result", replace(result, state=state)))
    except Exception as e:  # shown in the UI as a message, never lost in a process
        events.put(("error", f"{type(e).__name__}: {e}"))


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
    ):
        self.preset, self.text, self.name, self.resume = preset, text, check_name(name), resume
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

    def stop(self) -> None:
        """End the run after its current step (saved, resumable); for certain after grace_s."""
        if self._stop.is_set():
            return
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
            }


class TrainingSlot:
    """The one training run a server allows at a time (training takes most of its cores)."""

    def __init__(self, **run_options):
        self._lock = threading.Lock()
        self._options = run_options  # for TrainingRun: threads, nice, grace_s
        self.run: TrainingRun | None = None

    def start(self, preset: Preset, text: str, name: str, resume: bool = False, device="cpu") -> TrainingRun:
        with self._lock:
            other = self.run
            if other is not None and other.running:
                snap = other.snapshot()
                done = f"step {snap['step']} of {snap['total_steps']}" if snap["total_steps"] else "starting"
                raise ServerBusyError(
                    f"Another visitor's training run ({snap['preset']} preset, {done}) is using this server: "
                    "it trains one model at a time so that everyone's views stay quick. Start yours when it "
                    "has finished, or train on your own machine with `python -m core train`."
                )
            self.run = TrainingRun(preset, text, name, resume=resume, device=device, **self._options).start()
            return self.run
