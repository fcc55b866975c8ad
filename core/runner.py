"""A whole training run, for the CLI and the app: build or resume, train, save; and a runner
that does it in the background for a UI to poll and stop."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
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
from .errors import InvalidParameterError
from .presets import Preset, check_training_memory, preset_of
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


def run_training(preset: Preset, text: str, name: str, *, resume: bool = False, device="cpu",
                 on_eval=None, on_sample=None, on_step=None, should_stop=None, log=print,
                 tokenizer=None) -> TrainingResult:
    """Train `preset` on `text` (or resume the run saved as `name`) on `device`; save it as `name`.

    A fresh run does the book's `torch.manual_seed(seed); model = GPTModel(cfg)` on the CPU
    (the same weights on every device); it never touches a shared (frozen) model.
    """
    check_name(name)
    device = torch.device(device)
    tokenizer = tokenizer or get_tokenizer()
    digest = corpus_digest(text)
    train_loader, val_loader = make_train_loaders(text, preset.settings, tokenizer)
    check_training_memory(preset)
    elapsed = 0.0
    if resume:
        model = load_trained_model(model_path(name), trainable=True).to(device)
        optimizer, state, meta = load_resume_state(name, model)
        if meta["corpus_sha256"] != digest:
            raise InvalidParameterError(
                f"{name!r} was trained on another text; resume it on the same corpus.")
        if meta["config"] != model.cfg or meta["preset"] != preset.name:
            raise InvalidParameterError(
                f"{name!r} was trained with preset {meta['preset']!r}; resume it with that preset.")
        elapsed = meta.get("elapsed_s", 0.0)
        state.stopped = False
    else:
        state = TrainState()
        model = seeded_fresh_model(preset.cfg, preset.seed, state).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=preset.lr, weight_decay=preset.weight_decay)
    if preset.settings.context_length > model.context_length:
        raise InvalidParameterError("The loaders' context length exceeds the model's.")
    t0 = time.perf_counter()
    train_model_simple(model, train_loader, val_loader, optimizer, device, preset.num_epochs,
                       preset.eval_freq, preset.eval_iter, preset.start_context, tokenizer,
                       state=state, on_eval=on_eval, on_sample=on_sample, on_step=on_step,
                       should_stop=should_stop, log=log)
    elapsed += time.perf_counter() - t0
    path = save_checkpoint(name, model, optimizer, state, preset, digest, elapsed)
    return TrainingResult(name, path, state, preset, elapsed, len(train_loader))


class TrainingRun:
    """One training run in a background thread, polled by a UI.

    The thread appends to lists under a lock; the UI reads `snapshot()`. stop() asks the loop
    to end after the current step; the run is then saved and can be resumed with
    `TrainingRun(..., resume=True)`.
    """

    def __init__(self, preset: Preset, text: str, name: str, resume: bool = False, device="cpu"):
        self.preset, self.text, self.name, self.resume = preset, text, check_name(name), resume
        self.device = device
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.evals: list[dict] = []
        self.samples: list[tuple[int, str]] = []
        self.step = 0
        self.total_steps: int | None = None
        self.result: TrainingResult | None = None
        self.error: str | None = None
        self.started_at: float | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> TrainingRun:
        self.started_at = time.time()
        self._thread = threading.Thread(target=self._run, name=f"losslens-train-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        if self._thread:
            self._thread.join(timeout)

    def _on_eval(self, step, tokens_seen, train_loss, val_loss):
        with self._lock:
            self.evals.append({"step": step, "tokens_seen": tokens_seen, "train_loss": train_loss,
                               "val_loss": val_loss})

    def _on_sample(self, epoch, text):
        with self._lock:
            self.samples.append((epoch, text))

    def _on_step(self, state: TrainState):
        with self._lock:
            self.step = state.global_step + 1

    def _run(self):
        try:
            steps_per_epoch = len(make_train_loaders(self.text, self.preset.settings)[0])
            with self._lock:
                self.total_steps = steps_per_epoch * self.preset.num_epochs
            result = run_training(self.preset, self.text, self.name, resume=self.resume, device=self.device,
                                  on_eval=self._on_eval, on_sample=self._on_sample, on_step=self._on_step,
                                  should_stop=self._stop.is_set, log=None)
            with self._lock:
                self.result = result
        except Exception as e:  # shown in the UI as a message, never lost in a thread
            with self._lock:
                self.error = f"{type(e).__name__}: {e}"

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
            }
