"""Training presets: the book's run and a quick one, the RAM each needs, and the time each takes."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch

from core.book.loss import calc_loss_batch
from core.book.model import GPT_CONFIG_124M, GPTModel
from core.book.tokenizer import VOCAB_SIZE
from core.errors import InvalidParameterError
from core.models.loaders import LoaderSettings
from core.models.training import START_CONTEXT, generate_sample, make_train_loaders
from core.runtime.device import available_memory_gb, describe
from core.runtime.memory import MemoryBudget, memory_budget, process_rss
from core.runtime.precision import autocast
from core.runtime.rng import borrowed_rng
from core.runtime.tokenizer_files import get_tokenizer


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
    fast: bool = False  # bfloat16 training steps (core.runtime.precision); the book's presets are float32


QUICK_CONFIG = {
    "vocab_size": VOCAB_SIZE,
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
            raise InvalidParameterError(
                f"The number of epochs must be a whole number from 1 to 1000, got {n!r}."
            )
    return replace(preset, **overrides) if overrides else preset


def preset_of(meta: dict) -> Preset:
    """The preset a saved run was trained with (core.models.checkpoints' description), to resume it:
    its epochs, and its precision (a run resumes as it started)."""
    fast = meta.get("hyperparameters", {}).get("fast", False)
    return get_preset(meta["preset"], num_epochs=meta["num_epochs"], fast=fast or None)


def _parameters(preset: Preset) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in GPTModel(preset.cfg).parameters())


def training_memory_gb(preset: Preset) -> float:
    """Memory the tensors of a run need: weights, gradients and AdamW's two moments (4 x 4 bytes
    per parameter), plus the logits of a batch with their gradient and softmax (3 x B x L x vocab
    floats). This is what a GPU must hold; a process on the CPU needs more (child_peak_gb)."""
    s = preset.settings
    logits = 3 * s.batch_size * s.context_length * preset.cfg["vocab_size"] * 4
    return (
        16 * _parameters(preset) + logits
    ) / 1024**3 + 0.3  # + activations and the interpreter's working set


# Peak resident memory (VmHWM, MB) of a training child on the CPU, float32, from its start through
# evaluations, an epoch's sample and a saved stop: `python bench/bench_attacks.py --peaks`.
CHILD_PEAK_MB = {"quick": 870.0, "book": 4621.0}
# What a training child holds besides its tensors: torch, the tokenizer, the interpreter.
PROCESS_BASE_GB = 0.45
MARGIN_FRACTION, MARGIN_MIN_GB = 0.1, 0.2  # kept free under the limit: allocator slack, other visitors


def child_peak_gb(preset: Preset) -> float:
    """RAM a training run's process reaches at its peak: measured for the presets as they are,
    else (another model size) the tensors' need plus the process's own; bfloat16 steps add a
    bfloat16 copy of the weights."""
    formula = training_memory_gb(preset) + PROCESS_BASE_GB
    stock = PRESETS.get(preset.name)
    measured = CHILD_PEAK_MB.get(preset.name, 0.0) / 1024 if stock and stock.cfg == preset.cfg else 0.0
    peak = measured or formula
    return peak + (2 * _parameters(preset) / 1024**3 if preset.fast else 0.0)


def memory_margin_gb(budget: MemoryBudget) -> float:
    return max(MARGIN_MIN_GB, MARGIN_FRACTION * budget.limit_gb)


def training_memory_problem(preset: Preset, device="cpu", here: bool = False) -> str | None:
    """Why a run of `preset` would not fit this server's memory now, or None if it fits.

    The run's process must reach its measured peak beside everything already counted against
    the limit (the server, with $LOSSLENS_MEMORY_LIMIT or a cgroup), keeping a margin. `here`:
    the run is this process (the CLI, a training child), so what it already holds counts as
    part of the peak. A GPU must also hold the run's tensors."""
    budget = memory_budget()
    peak = child_peak_gb(preset)
    need = max(0.0, peak - process_rss() / 1024**3) if here else peak
    margin = memory_margin_gb(budget) if budget.source != "unknown" else 0.0
    if budget.source != "unknown" and budget.free_gb < need + margin:
        limit = (
            f"this server's limit is {budget.limit_gb:.1f} GB ({budget.source}), "
            f"with {budget.free_gb:.1f} GB free"
            if budget.source != "MemAvailable"
            else f"this machine has {budget.free_gb:.1f} GB free"
        )
        return (
            f"Training the {preset.name} preset needs about {peak:.1f} GB of RAM at its peak; "
            f"{limit}, and {margin:.1f} GB is kept spare."
        )
    device = torch.device(device)
    if device.type != "cpu":
        free = available_memory_gb(device)
        need = training_memory_gb(preset)
        if free is not None and free < need:
            return (
                f"Training the {preset.name} preset needs about {need:.1f} GB of free memory on "
                f"{describe(device)}; it has {free:.1f} GB free."
            )
    return None


def check_training_memory(preset: Preset, device="cpu", here: bool = False) -> None:
    """Refuse a run that would not fit (a small server would be killed, every visitor's page
    with it; a GPU would run out of memory mid-run)."""
    problem = training_memory_problem(preset, device, here)
    if problem:
        raise InvalidParameterError(
            f"{problem} Use the quick preset, or run `python -m core train --preset {preset.name}` "
            "on a machine with more memory."
        )


# --- the time estimate: the app and the CLI print the same one ---------------------------------


def estimate_time(preset: Preset, text: str, steps: int = 2, tokenizer=None, device="cpu") -> dict:
    """Seconds per training step, per epoch and for the whole preset, measured on this machine.

    Runs `steps` real optimizer steps (after one warm-up) on a throwaway model, and times an
    evaluation batch and a 50-token sample, then counts what the run would do (`project`).
    """
    tokenizer = tokenizer or get_tokenizer()
    train_loader, val_loader = make_train_loaders(text, preset.settings, tokenizer)
    with borrowed_rng():  # a DataLoader's iterator draws its base seed
        batch = next(iter(val_loader))
    timings = _measure(preset, batch, steps, tokenizer, torch.device(device))
    timings.update(
        train_batches=len(train_loader),
        val_batches=len(val_loader),
        threads=torch.get_num_threads(),
        device=str(device),
    )
    return project(timings, preset)


def _measure(preset: Preset, batch, steps: int, tokenizer, device) -> dict:
    # A throwaway model and its dropout draw from the global generator, borrowed piece by piece
    with borrowed_rng():
        model = GPTModel(preset.cfg).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=preset.lr, weight_decay=preset.weight_decay)
    times = []
    for _ in range(steps + 1):
        with borrowed_rng():  # timed inside: a wait for the lock is not a step's time
            t = time.perf_counter()
            optimizer.zero_grad()
            with autocast(device, preset.fast):
                loss = calc_loss_batch(*batch, model, device)
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - t)
    model.eval()
    t = time.perf_counter()
    with torch.no_grad():
        calc_loss_batch(*batch, model, device)
        if preset.fast:  # a fast run evaluates in float32 and again in bfloat16 (its yardstick)
            with autocast(device, True):
                calc_loss_batch(*batch, model, device)
    eval_batch_s = time.perf_counter() - t
    t = time.perf_counter()
    generate_sample(model, tokenizer, preset.start_context, device=device)
    sample_s = time.perf_counter() - t
    return {"step_s": sum(times[1:]) / steps, "eval_batch_s": eval_batch_s, "sample_s": sample_s}


def project(timings: dict, preset: Preset) -> dict:
    """Measured timings -> seconds per epoch and in all for `preset` (its number of epochs)."""
    e = dict(timings, preset=preset.name, num_epochs=preset.num_epochs)
    steps_per_epoch = e["steps_per_epoch"] = e["train_batches"]
    total_steps = e["total_steps"] = steps_per_epoch * preset.num_epochs
    n_evals = (total_steps - 1) // preset.eval_freq + 1
    eval_batches = min(preset.eval_iter, e["train_batches"]) + min(preset.eval_iter, e["val_batches"])
    eval_s = eval_batches * e["eval_batch_s"]
    e["epoch_s"] = steps_per_epoch * e["step_s"] + e["sample_s"] + steps_per_epoch / preset.eval_freq * eval_s
    e["total_s"] = total_steps * e["step_s"] + n_evals * eval_s + preset.num_epochs * e["sample_s"]
    return e


def describe_estimate(e: dict) -> str:
    """One sentence for the app and the CLI alike."""
    book = " (the book: about 5 min for 10 epochs on an M3 MacBook Air)" if e["preset"] == "book" else ""
    return (
        f"Measured on this machine ({e['threads']} thread{'' if e['threads'] == 1 else 's'}): "
        f"{e['step_s']:.2f} s per training step, "
        f"{e['steps_per_epoch']} steps per epoch → about {e['epoch_s']:.0f} s per epoch, "
        f"{e['total_s'] / 60:.1f} min for {e['num_epochs']} epochs with evaluations and samples{book}."
    )
