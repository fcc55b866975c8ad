"""A whole training run, for the CLI and the app: build or resume, train, save; and a runner
that does it in a child process for a UI to poll and stop, one run per server at a time."""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .checkpoints import (
    check_name,
    check_new_name,
    corpus_digest,
    is_resumable,
    load_resume_state,
    load_trained_model,
    model_path,
    save_checkpoint,
    saved_run,
)
from .errors import InvalidParameterError, ServerBusyError
from .model import GPTModel
from .presets import Preset, check_training_memory, preset_of
from .priority import lower_thread_priority
from .rng import seeded_fresh_model
from .tokenizer import get_tokenizer
from .train import TrainState, make_train_loaders, train_model_simple


@dataclass
class TrainingResult:
    name: str
    path: Path
    state: TrainState
    preset: Preset
    elapsed_s: float
    steps_per_epoch: int

    @property
    def finished(self) -> bool:
        return not self.state.stopped


def plan_run(preset: Preset, name: str, resume: bool = False) -> Preset:
    """The preset a Train or Resume press runs, after the checks: a fresh run needs a free name,
    a resumed one the preset it was saved with; both need the RAM."""
    check_name(name)
    if resume:
        if not is_resumable(name):
            raise InvalidParameterError(f"No stopped run is saved as {name!r}; start a new one with Train.")
        preset = preset_of(saved_run(name))
    else:
        check_new_name(name)
    check_training_memory(preset)
    return preset


def _trainable(model):
    """A registry model (frozen for inference) made trainable: gradients on, train mode."""
    for p in model.parameters():
        p.requires_grad_(True)
    return model.train()


def run_training(
    preset: Preset,
    text: str,
    name: str,
    *,
    resume: bool = False,
    device="cpu",
    init_model: GPTModel | None = None,
    on_eval=None,
    on_sample=None,
    on_step=None,
    should_stop=None,
    log=print,
    tokenizer=None,
) -> TrainingResult:
    """Train `preset` on `text` (or resume the run saved as `name`) on `device`; save it as `name`.

    A fresh run does the book's `torch.manual_seed(seed); model = GPTModel(cfg)` on the CPU
    (the same weights on every device); it never touches a shared (frozen) model. `init_model`
    (a model of its own, e.g. from core.registry.load_model) starts the run from its weights and
    configuration instead; it is made trainable in place.
    """
    check_name(name)
    device = torch.device(device)
    tokenizer = tokenizer or get_tokenizer()
    digest = corpus_digest(text)
    start = None
    if init_model is not None and not resume:
        start = _trainable(init_model)
        preset = replace(preset, cfg=dict(start.cfg))  # memory, checkpoint and loaders follow its size
    train_loader, val_loader = make_train_loaders(text, preset.settings, tokenizer)
    check_training_memory(preset, device)
    elapsed = 0.0
    if resume:
        model = load_trained_model(model_path(name), trainable=True).to(device)
        optimizer, state, meta = load_resume_state(name, model)
        if meta["corpus_sha256"] != digest:
            raise InvalidParameterError(
                f"{name!r} was trained on another text; resume it on the same corpus."
            )
        if meta["config"] != model.cfg or meta["preset"] != preset.name:
            raise InvalidParameterError(
                f"{name!r} was trained with preset {meta['preset']!r}; resume it with that preset."
            )
        elapsed = meta.get("elapsed_s", 0.0)
        state.stopped = False
    else:
        state = TrainState()
        model = (start if start is not None else seeded_fresh_model(preset.cfg, preset.seed, state)).to(
            device
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=preset.lr, weight_decay=preset.weight_decay)
    if preset.settings.context_length > model.context_length:
        raise InvalidParameterError("The loaders' context length exceeds the model's.")
    t0 = time.perf_counter()
    train_model_simple(
        model,
        train_loader,
        val_loader,
        optimizer,
        device,
        preset.num_epochs,
        preset.eval_freq,
        preset.eval_iter,
        preset.start_context,
        tokenizer,
        state=state,
        on_eval=on_eval,
        on_sample=on_sample,
        on_step=on_step,
        should_stop=should_stop,
        log=log,
    )
    elapsed += time.perf_counter() - t0
    path = save_checkpoint(name, model, optimizer, state, preset, digest, elapsed)
    return TrainingResult(name, path, state, preset, elapsed, len(train_loader))


EVAL_FIELDS = ("step", "tokens_seen", "train_loss", "val_loss")
EXIT_GRACE_S = 10.0  # a child that has saved and reported, or been terminated, gets this long to exit
NICE = int(os.environ.get("LOSSLENS_TRAIN_NICE", "10"))  # how much lower the training child's priority is


def default_threads() -> int:
    """Threads for a training child: all but one core, so visitors keep one to themselves."""
    return max(1, (os.cpu_count() or 2) - 1)


def _end_with_parent(parent: int) -> None:
    """A server killed outright runs no clean-up: its training child notices, and ends too."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _child(preset, text, name, resume, device, threads, nice, events, stop, parent) -> None:
    """The training process: lower priority, its own thread count; reports through `events`."""
    threading.Thread(target=_end_with_parent, args=(parent,), daemon=True).start()
    torch.set_num_threads(threads)
    w = torch.zeros(1, requires_grad=True)  # AdamW's first step imports torch._dynamo (seconds of CPU):
    w.sum().backward()  # done before the run reports that it started
    torch.optim.AdamW([w]).step()
    os.nice(max(0, nice - os.nice(0)))  # on Linux the child was born at this nice value already
    events.put(("started", {"pid": os.getpid(), "nice": os.nice(0), "threads": torch.get_num_threads()}))
    try:
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
            on_step=lambda state: events.put(("step", state.global_step + 1)),
        )
        state = replace(result.state, rng_now=None, rng_epoch_start=None)  # small to send back
        events.put(("result", replace(result, state=state)))
    except Exception as e:  # shown in the UI as a message, never lost in a process
        events.put(("error", f"{type(e).__name__}: {e}"))


class TrainingRun:
    """One training run in a child process, polled by a UI.

    The child runs at a lower OS priority (`nice`) with its own torch thread count, so the
    server's visitors keep their share of the CPU; its memory goes back to the system when it
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
            ),
        )
        self.evals: list[dict] = []
        self.samples: list[tuple[int, str]] = []
        self.step = 0
        self.total_steps: int | None = None
        self.result: TrainingResult | None = None
        self.error: str | None = None
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
                if kind in ("started", "total_steps", "step", "result", "error"):
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
