"""Section 5.2: pretraining on a corpus with the book's train_model_simple, plus stop and resume.

`train_model_simple` keeps the book's loop, names and log; the extras are optional
callbacks for a UI (on_eval, on_sample, should_stop) and a TrainState that a stopped run
can be saved to and resumed from. The training shuffle and dropout draw from torch's global
generator exactly as in the book, so `torch.manual_seed(123)` before building the model
reproduces the book's log; a checkpoint stores the generator's state to resume exactly.

Checkpoints are safetensors only: <cache>/models/<name>.safetensors holds the weights and a
JSON description (config, preset, losses); <name>.resume.safetensors holds the optimizer
state and the generator states.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from .data import LoaderSettings, create_dataloader_v1, split_text
from .errors import InvalidParameterError, WeightsError
from .evaluate import calc_loss_batch, calc_loss_loader
from .model import GPT_CONFIG_124M, GPTModel, freeze
from .registry import RNG_LOCK
from .tokenizer import ENDOFTEXT, get_tokenizer

START_CONTEXT = "Every effort moves you"
FORMAT = "losslens-trained-v1"


# --- the book's helpers (section 5.1 and 4.7) -------------------------------------------

def text_to_token_ids(text, tokenizer):
    encoded = tokenizer.encode(text, allowed_special={ENDOFTEXT})
    return torch.tensor(encoded).unsqueeze(0)  # add the batch dimension


def token_ids_to_text(token_ids, tokenizer):
    return tokenizer.decode(token_ids.squeeze(0).tolist())


def generate_text_simple(model, idx, max_new_tokens, context_size):
    """Greedy decoding: append the most likely next token `max_new_tokens` times."""
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]
        with torch.no_grad():
            logits = model(idx_cond)
        idx_next = torch.argmax(logits[:, -1, :], dim=-1, keepdim=True)
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


def generate_sample(model, tokenizer, start_context=START_CONTEXT, max_new_tokens=50) -> str:
    """The book's generate_and_print_sample, returning the text (newlines folded) instead."""
    was_training = model.training
    model.eval()
    encoded = text_to_token_ids(start_context, tokenizer)
    token_ids = generate_text_simple(model, encoded, max_new_tokens, model.pos_emb.weight.shape[0])
    model.train(was_training)
    return token_ids_to_text(token_ids, tokenizer).replace("\n", " ")


def evaluate_model(model, train_loader, val_loader, device, eval_iter):
    model.eval()
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
    model.train()
    return train_loss, val_loss


# --- the training loop --------------------------------------------------------------------

@dataclass
class TrainState:
    """Where a run is: enough to save it, plot it, and resume it exactly."""

    epoch: int = 0  # current epoch, 0-based
    batch: int = 0  # batches done in the current epoch
    global_step: int = -1  # the book's counter: -1 before the first step
    tokens_seen: int = 0
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    track_tokens_seen: list[int] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    stopped: bool = False
    # Global generator states: at the start of the current epoch (it drew the epoch's
    # shuffle) and now. Not saved in the JSON part; tensors go to the resume file.
    rng_epoch_start: torch.Tensor | None = field(default=None, repr=False)
    rng_now: torch.Tensor | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("rng_epoch_start"), d.pop("rng_now")
        return d


@contextlib.contextmanager
def own_rng(state: TrainState):
    """Run a piece of training on this run's own random stream.

    torch has one global generator per process; a server trains in a thread while other
    sessions seed it to build the untrained model. Under RNG_LOCK, each piece of training
    swaps its stream in and out, so neither disturbs the other: the untrained model keeps
    the book's weights and the run keeps the book's shuffle and dropout masks.
    """
    with RNG_LOCK:
        if state.rng_now is not None:
            torch.set_rng_state(state.rng_now)
        try:
            yield
        finally:
            state.rng_now = torch.get_rng_state()


def train_model_simple(model, train_loader, val_loader, optimizer, device, num_epochs,
                       eval_freq, eval_iter, start_context, tokenizer, *,
                       state: TrainState | None = None,
                       on_eval: Callable[[int, int, float, float], None] | None = None,
                       on_sample: Callable[[int, str], None] | None = None,
                       on_step: Callable[[TrainState], None] | None = None,
                       should_stop: Callable[[], bool] | None = None,
                       log: Callable[[str], None] | None = print):
    """The book's loop. Returns train_losses, val_losses, track_tokens_seen.

    `state` (a fresh or a resumed TrainState) is updated in place; should_stop() is asked
    after every step and ends the run with state.stopped = True, ready to be resumed.
    """
    state = state if state is not None else TrainState()
    train_losses, val_losses, track_tokens_seen = state.train_losses, state.val_losses, state.track_tokens_seen
    if len(train_loader) == 0:
        from .errors import NoBatchesError

        raise NoBatchesError("The training loader has no batch: use a longer text or a shorter context length.")

    for epoch in range(state.epoch, num_epochs):
        model.train()
        with own_rng(state):
            if state.batch == 0:
                state.rng_epoch_start = torch.get_rng_state()
                batches = iter(train_loader)
            else:
                # Resume mid-epoch: replay this epoch's shuffle, skip the batches already
                # done, then continue from the generator state saved at the stop.
                now = torch.get_rng_state()
                torch.set_rng_state(state.rng_epoch_start)
                batches = iter(train_loader)
                for _ in range(state.batch):
                    next(batches)
                torch.set_rng_state(now)

        while True:
            with own_rng(state):  # the shuffle is drawn at the first next(), dropout in the forward pass
                batch = next(batches, None)
                if batch is None:
                    break
                input_batch, target_batch = batch
                optimizer.zero_grad()
                loss = calc_loss_batch(input_batch, target_batch, model, device)
                loss.backward()
                optimizer.step()
                state.tokens_seen += input_batch.numel()
                state.global_step += 1
                state.batch += 1
                evaluated = None
                if state.global_step % eval_freq == 0:
                    evaluated = evaluate_model(model, train_loader, val_loader, device, eval_iter)
            if evaluated is not None:
                train_loss, val_loss = evaluated
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                track_tokens_seen.append(state.tokens_seen)
                state.eval_steps.append(state.global_step)
                if log:
                    log(f"Ep {epoch + 1} (Step {state.global_step:06d}): "
                        f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")
                if on_eval:
                    on_eval(state.global_step, state.tokens_seen, train_loss, val_loss)
            if on_step:
                on_step(state)
            if state.batch < len(train_loader) and should_stop and should_stop():
                state.stopped = True
                return train_losses, val_losses, track_tokens_seen

        sample = generate_sample(model, tokenizer, start_context)  # greedy: draws no random numbers
        state.samples.append(sample)
        if log:
            log(sample)
        if on_sample:
            on_sample(epoch + 1, sample)
        state.epoch, state.batch = epoch + 1, 0
        if epoch + 1 < num_epochs and should_stop and should_stop():
            state.stopped = True
            return train_losses, val_losses, track_tokens_seen

    state.stopped = False
    return train_losses, val_losses, track_tokens_seen


# --- presets --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    cfg: dict
    settings: LoaderSettings
    num_epochs: int
    lr: float = 0.0004
    weight_decay: float = 0.1
    eval_freq: int = 5
    eval_iter: int = 5
    seed: int = 123
    start_context: str = START_CONTEXT


QUICK_CONFIG = {
    "vocab_size": 50257,
    "context_length": 64,
    "emb_dim": 128,
    "n_heads": 4,
    "n_layers": 2,
    "drop_rate": 0.1,
    "qkv_bias": False,
}

PRESETS = {
    "book": Preset(
        name="book",
        description="Section 5.2: GPT_CONFIG_124M, context 256, batch 2, AdamW lr 0.0004, 10 epochs.",
        cfg=GPT_CONFIG_124M,
        settings=LoaderSettings(train_ratio=0.9, context_length=256, stride=256, batch_size=2, seed=123),
        num_epochs=10,
    ),
    "quick": Preset(
        name="quick",
        description="A small GPT (2 layers, width 128, context 64, batch 8, AdamW lr 0.003) for 8 epochs: "
        "the training loss falls from 10.8 to below 4 while the validation loss levels off near 6.2.",
        cfg=QUICK_CONFIG,
        settings=LoaderSettings(train_ratio=0.9, context_length=64, stride=64, batch_size=8, seed=123),
        num_epochs=8,
        lr=0.003,
        eval_iter=2,  # cheaper evaluations: with 9 steps per epoch they would cost as much as training
    ),
}


def get_preset(name: str, **overrides) -> Preset:
    if name not in PRESETS:
        raise InvalidParameterError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    preset = PRESETS[name]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "num_epochs" in overrides:
        n = overrides["num_epochs"]
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1000:
            raise InvalidParameterError(f"The number of epochs must be a whole number from 1 to 1000, got {n!r}.")
    return replace(preset, **overrides) if overrides else preset


def training_memory_gb(preset: Preset) -> float:
    """RAM a run needs: weights, gradients and AdamW's two moments (4 x 4 bytes per parameter),
    plus the logits of a batch with their gradient and softmax (3 x B x L x vocab floats)."""
    with torch.device("meta"):
        n = sum(p.numel() for p in GPTModel(preset.cfg).parameters())
    s = preset.settings
    logits = 3 * s.batch_size * s.context_length * preset.cfg["vocab_size"] * 4
    return (16 * n + logits) / 1024**3 + 0.3  # + activations and the interpreter's working set


def check_training_memory(preset: Preset) -> None:
    """Refuse a run that would not fit in the free RAM (a small server would be killed)."""
    from .weights import available_ram_gb

    need, free = training_memory_gb(preset), available_ram_gb()
    if free is not None and free < need:
        raise InvalidParameterError(
            f"Training the {preset.name} preset needs about {need:.1f} GB of free RAM; this machine has "
            f"{free:.1f} GB free. Use the quick preset, or run `python -m core train --preset {preset.name}` "
            "on a machine with more memory."
        )


def make_train_loaders(text: str, settings: LoaderSettings, tokenizer=None):
    """The book's training loaders: the train loader shuffles with the global generator."""
    from .corpus import validate_corpus_text

    validate_corpus_text(text)
    settings.validate()
    train_text, val_text = split_text(text, settings.train_ratio)
    L, S, B = settings.context_length, settings.stride, settings.batch_size
    train_loader = create_dataloader_v1(train_text, batch_size=B, max_length=L, stride=S, shuffle=True,
                                        drop_last=True, tokenizer=tokenizer)
    val_loader = create_dataloader_v1(val_text, batch_size=B, max_length=L, stride=S, shuffle=False,
                                      drop_last=False, tokenizer=tokenizer)
    from .errors import NoBatchesError

    for name, loader in (("training", train_loader), ("validation", val_loader)):
        if len(loader) == 0:
            raise NoBatchesError(
                f"The {name} split has no batch of {B} x {L} tokens: use a longer text or a smaller preset."
            )
    return train_loader, val_loader


# --- saving, loading, resuming -------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def models_dir() -> Path:
    from .paths import cache_dir

    path = cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith(".resume"):
        raise InvalidParameterError(
            f"Model name {name!r}: use 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit."
        )
    return name


def model_path(name: str) -> Path:
    return models_dir() / f"{check_name(name)}.safetensors"


def resume_path(name: str) -> Path:
    return models_dir() / f"{check_name(name)}.resume.safetensors"


def _atomic_save(tensors: dict, path: Path, metadata: dict) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp), metadata={"losslens": json.dumps(metadata)})
    tmp.replace(path)  # a reader never sees a half-written file


def save_checkpoint(name: str, model, optimizer, state: TrainState, preset: Preset, corpus_sha256: str,
                    elapsed_s: float = 0.0) -> Path:
    """Weights + description to <name>.safetensors; optimizer and generators to <name>.resume.safetensors."""
    meta = {
        "format": FORMAT,
        "name": name,
        "config": model.cfg,
        "preset": preset.name,
        "hyperparameters": {k: v for k, v in asdict(preset).items() if k not in ("cfg", "description")},
        "num_epochs": preset.num_epochs,
        "corpus_sha256": corpus_sha256,
        "elapsed_s": elapsed_s,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "state": state.to_json(),
    }
    weights = dict(model.state_dict())
    if model.out_head.weight is model.tok_emb.weight:  # tied (from GPT-2): store once
        weights.pop("out_head.weight")
        meta["tied_out_head"] = True
    path = model_path(name)
    _atomic_save(weights, path, meta)

    opt = optimizer.state_dict()
    tensors = {"rng.now": state.rng_now if state.rng_now is not None else torch.get_rng_state()}
    if state.rng_epoch_start is not None:
        tensors["rng.epoch_start"] = state.rng_epoch_start
    for idx, slots in opt["state"].items():
        for key, value in slots.items():
            tensors[f"optim.{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    _atomic_save(tensors, resume_path(name), {"param_groups": opt["param_groups"], "weights": path.name})
    return path


def read_metadata(path: str | Path) -> dict:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("losslens", "null"))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{Path(path).name} is not a readable safetensors file: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise WeightsError(f"{Path(path).name} is not a model trained by LossLens.")
    return meta


def load_trained_model(path: str | Path, trainable: bool = False) -> GPTModel:
    """A saved model: frozen for inference, or (trainable=True) in train mode with gradients."""
    from .weights import read_safetensors

    meta = read_metadata(path)
    weights = read_safetensors(path)
    with torch.device("meta"):
        model = GPTModel(meta["config"])
    tied = meta.get("tied_out_head", False)
    if tied:
        weights["out_head.weight"] = weights["tok_emb.weight"]
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as e:
        raise WeightsError(f"{Path(path).name} does not fit its own config: {e}") from e
    if tied:
        model.out_head.weight = model.tok_emb.weight
    if trainable:
        model.train()
        model.requires_grad_(True)
        return model
    return freeze(model)


def load_resume_state(name: str, model) -> tuple[torch.optim.Optimizer, TrainState, dict]:
    """Optimizer (AdamW with its moments), TrainState and description of a saved run."""
    from safetensors import safe_open

    meta = read_metadata(model_path(name))
    path = resume_path(name)
    if not path.is_file():
        raise WeightsError(f"No resume data for {name!r} ({path.name} is missing).")
    with safe_open(str(path), framework="pt") as f:
        extra = json.loads(f.metadata()["losslens"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iteration)
    groups = extra["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    opt_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, slot = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[slot] = value
    optimizer = torch.optim.AdamW(model.parameters(), lr=groups[0]["lr"], weight_decay=groups[0]["weight_decay"])
    optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    s = dict(meta["state"])
    state = TrainState(**s, rng_epoch_start=tensors.get("rng.epoch_start"), rng_now=tensors["rng.now"])
    return optimizer, state, meta


def list_trained_models() -> list[tuple[Path, dict]]:
    """(path, description) of every readable trained model in the cache, newest first."""
    found = []
    folder = models_dir()
    for path in folder.glob("*.safetensors"):
        if path.name.endswith(".resume.safetensors"):
            continue
        try:
            found.append((path, read_metadata(path)))
        except WeightsError:
            continue  # a foreign or damaged file: not offered
    found.sort(key=lambda pm: pm[0].stat().st_mtime, reverse=True)
    return found


# --- a whole run: the CLI and the app -----------------------------------------------------------

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


def corpus_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def run_training(preset: Preset, text: str, name: str, *, resume: bool = False,
                 on_eval=None, on_sample=None, on_step=None, should_stop=None, log=print,
                 tokenizer=None) -> TrainingResult:
    """Train `preset` on `text` (or resume the run saved as `name`) and save it as `name`.

    A fresh run does the book's `torch.manual_seed(seed); model = GPTModel(cfg)`; it never
    touches a shared (frozen) model.
    """
    check_name(name)
    tokenizer = tokenizer or get_tokenizer()
    digest = corpus_digest(text)
    train_loader, val_loader = make_train_loaders(text, preset.settings, tokenizer)
    check_training_memory(preset)
    elapsed = 0.0
    if resume:
        model = load_trained_model(model_path(name), trainable=True)
        optimizer, state, meta = load_resume_state(name, model)
        if meta["corpus_sha256"] != digest:
            raise InvalidParameterError(f"{name!r} was trained on another text; resume it on the same corpus.")
        if meta["config"] != model.cfg or meta["preset"] != preset.name:
            raise InvalidParameterError(f"{name!r} was trained with preset {meta['preset']!r}; resume it with that preset.")
        elapsed = meta.get("elapsed_s", 0.0)
        state.stopped = False
    else:
        state = TrainState()
        with own_rng(state):  # the book: torch.manual_seed(123); model = GPTModel(GPT_CONFIG_124M)
            torch.manual_seed(preset.seed)
            model = GPTModel(preset.cfg)
        optimizer = torch.optim.AdamW(model.parameters(), lr=preset.lr, weight_decay=preset.weight_decay)
    if preset.settings.context_length > model.context_length:
        raise InvalidParameterError("The loaders' context length exceeds the model's.")
    t0 = time.perf_counter()
    train_model_simple(model, train_loader, val_loader, optimizer, "cpu", preset.num_epochs,
                       preset.eval_freq, preset.eval_iter, preset.start_context, tokenizer,
                       state=state, on_eval=on_eval, on_sample=on_sample, on_step=on_step,
                       should_stop=should_stop, log=log)
    elapsed += time.perf_counter() - t0
    path = save_checkpoint(name, model, optimizer, state, preset, digest, elapsed)
    return TrainingResult(name, path, state, preset, elapsed, len(train_loader))


def estimate_time(preset: Preset, text: str, steps: int = 2, tokenizer=None) -> dict:
    """Seconds per training step, per epoch and for the whole preset, measured on this machine.

    Runs `steps` real optimizer steps (after one warm-up) on a throwaway model, and times an
    evaluation batch and a 50-token sample, then counts what the run would do.
    """
    tokenizer = tokenizer or get_tokenizer()
    train_loader, val_loader = make_train_loaders(text, preset.settings, tokenizer)
    with RNG_LOCK:  # a throwaway model: measured on a copy of the generator, which is then put back
        return _estimate_time(preset, train_loader, val_loader, steps, tokenizer)


def _estimate_time(preset, train_loader, val_loader, steps, tokenizer) -> dict:
    rng = torch.get_rng_state()
    try:
        model = GPTModel(preset.cfg)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=preset.lr, weight_decay=preset.weight_decay)
        batch = next(iter(val_loader))
        times = []
        for _ in range(steps + 1):
            t = time.perf_counter()
            optimizer.zero_grad()
            calc_loss_batch(*batch, model, "cpu").backward()
            optimizer.step()
            times.append(time.perf_counter() - t)
        step_s = sum(times[1:]) / steps
        model.eval()
        t = time.perf_counter()
        with torch.no_grad():
            calc_loss_batch(*batch, model, "cpu")
        eval_batch_s = time.perf_counter() - t
        t = time.perf_counter()
        generate_sample(model, tokenizer, preset.start_context)
        sample_s = time.perf_counter() - t
    finally:
        torch.set_rng_state(rng)  # the estimate leaves the book's random stream untouched
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * preset.num_epochs
    n_evals = (total_steps - 1) // preset.eval_freq + 1
    eval_batches = min(preset.eval_iter, len(train_loader)) + min(preset.eval_iter, len(val_loader))
    epoch_s = steps_per_epoch * step_s + sample_s + steps_per_epoch / preset.eval_freq * eval_batches * eval_batch_s
    total_s = total_steps * step_s + n_evals * eval_batches * eval_batch_s + preset.num_epochs * sample_s
    return {
        "preset": preset.name,
        "step_s": step_s,
        "eval_batch_s": eval_batch_s,
        "sample_s": sample_s,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "epoch_s": epoch_s,
        "total_s": total_s,
        "threads": torch.get_num_threads(),
    }


class TrainingRun:
    """One training run in a background thread, polled by a UI.

    The thread appends to `events`-like lists under a lock; the UI reads `snapshot()`.
    stop() asks the loop to end after the current step; the run is then saved and can be
    resumed with `TrainingRun(..., resume=True)`.
    """

    def __init__(self, preset: Preset, text: str, name: str, resume: bool = False):
        self.preset, self.text, self.name, self.resume = preset, text, check_name(name), resume
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
            self.evals.append({"step": step, "tokens_seen": tokens_seen, "train_loss": train_loss, "val_loss": val_loss})

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
            result = run_training(self.preset, self.text, self.name, resume=self.resume,
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
