"""A whole training run, for the CLI and the app: build or resume, train, save.
(core.serving.background runs it in a child process for a UI to poll and stop.)"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from core.book.model import GPTModel
from core.errors import InvalidParameterError
from core.models import checkpoints, model_files, storage
from core.models.checkpoints import check_name, corpus_digest, load_trained_model
from core.models.presets import Preset, check_training_memory, preset_of
from core.models.training import TrainState, make_train_loaders, train_model
from core.runtime.rng import seeded_fresh_model
from core.runtime.tokenizer_files import get_tokenizer


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


def plan_run(preset: Preset, name: str, resume: bool = False, owner: str | None = None) -> Preset:
    """The preset a Train or Resume press runs, after the checks: a fresh run needs a free name,
    a resumed one the preset it was saved with; both need the RAM."""
    check_name(name)
    if resume:
        if not checkpoints.is_resumable(name, owner=owner):
            raise InvalidParameterError(f"No stopped run is saved as {name!r}; start a new one with Train.")
        preset = preset_of(checkpoints.saved_run(name, owner=owner))
    else:
        checkpoints.check_new_name(name, owner=owner)
    storage.check_room(preset.cfg, name, owner=owner)  # its save fits the quota and the disk
    check_training_memory(preset)
    return preset


def _trainable(model):
    """A registry model (frozen for inference) made trainable: plain weights with gradients
    (GPTModel.requires_grad_ unpacks those packed for inference), train mode."""
    return model.requires_grad_(True).train()


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
    owner: str | None = None,
) -> TrainingResult:
    """Train `preset` on `text` (or resume the run saved as `name`) on `device`; save it as `name`.

    A fresh run does the book's `torch.manual_seed(seed); model = GPTModel(cfg)` on the CPU
    (the same weights on every device); it never touches a shared (frozen) model. `init_model`
    (a model of its own, e.g. from core.models.registry.load_model) starts the run from its weights and
    configuration instead; it is made trainable in place. `owner` is the visitor whose
    namespace the run is saved in on a shared server (None: a local server's one namespace).
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
    check_training_memory(preset, device, here=True)
    elapsed = 0.0
    if resume:
        model = load_trained_model(checkpoints.model_path(name, owner=owner), trainable=True).to(device)
        optimizer, state, meta = checkpoints.load_resume_state(name, model, owner=owner)
        if meta["corpus_sha256"] != digest:
            raise InvalidParameterError(
                f"{name!r} was trained on another text; resume it on the same corpus."
            )
        if meta["config"] != model.cfg or meta["preset"] != preset.name:
            raise InvalidParameterError(
                f"{name!r} was trained with preset {meta['preset']!r}; resume it with that preset."
            )
        if meta["hyperparameters"].get("fast", False) != preset.fast:
            was = "bfloat16 (fast mode)" if not preset.fast else "float32"
            raise InvalidParameterError(f"{name!r} was trained in {was}; resume it in the same precision.")
        elapsed = meta.get("elapsed_s", 0.0)
        state.stopped = False
    else:
        state = TrainState()
        model = (start if start is not None else seeded_fresh_model(preset.cfg, preset.seed, state)).to(
            device
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=preset.lr, weight_decay=preset.weight_decay)
    if preset.settings.context_length > model.cfg["context_length"]:
        raise InvalidParameterError("The loaders' context length exceeds the model's.")
    t0 = time.perf_counter()
    with model_files.training(name, owner=owner):  # no other save's quota evicts this one meanwhile
        train_model(
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
            fast=preset.fast,
        )
        elapsed += time.perf_counter() - t0
        path = checkpoints.save_checkpoint(
            name, model, optimizer, state, preset, digest, elapsed, owner=owner
        )
    return TrainingResult(name, path, state, preset, elapsed, len(train_loader))
