"""What runs in a training child process: the run itself (lower OS priority, its own torch
thread count, waiting between steps while visitors' requests run) and the time estimate.
Both report through a queue and end with their parent."""

from __future__ import annotations

import multiprocessing
import multiprocessing.spawn
import os
import threading
import time
from dataclasses import replace

import torch

from core.errors import LossLensError
from core.models.presets import estimate_time
from core.models.training import make_train_loaders
from core.runtime.memory import process_rss
from core.serving.priority import yield_to_foreground
from core.serving.runner import run_training

EVAL_FIELDS = ("step", "tokens_seen", "train_loss", "val_loss")
EXIT_GRACE_S = 10.0  # a child that has saved and reported, or been terminated, gets this long to exit
NICE = int(os.environ.get("LOSSLENS_TRAIN_NICE", "10"))  # how much lower the training child's priority is
# The longest a training child waits, between two steps, for a quiet moment among visitors'
# requests (priority.QUIET_S): visitors go first, and a server busy without a pause still trains
# at least one step per this long.
YIELD_S = 10.0
CHILD_PREFIX = "losslens-"  # the names of the training and estimate children
# The standard function, even when this module is imported again (Streamlit reloads modules).
_PREPARATION_DATA = getattr(
    multiprocessing.spawn.get_preparation_data, "__wrapped__", multiprocessing.spawn.get_preparation_data
)


def _preparation_data(name: str) -> dict:
    """What a spawned child is told to import first, less the parent's main module for
    LossLens's children: under `streamlit run` that is the app's script, which would run again in
    the child, without a session (a warning per Streamlit call) and with a model of its own."""
    data = _PREPARATION_DATA(name)
    if name.startswith(CHILD_PREFIX):
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
    return data


_preparation_data.__wrapped__ = _PREPARATION_DATA
multiprocessing.spawn.get_preparation_data = _preparation_data


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (VmHWM), in MB."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return process_rss() / 2**20


def default_threads() -> int:
    """Threads for a training child: all but one core, so visitors keep one to themselves."""
    return max(1, (os.cpu_count() or 2) - 1)


def _end_with_parent(parent: int) -> None:
    """A server killed outright runs no clean-up: its training child notices, and ends too."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def train_in_child(
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


def estimate_in_child(preset, text, device, threads, nice, events, parent) -> None:
    """The time estimate's process: real training steps, so never in the server's own memory."""
    threading.Thread(target=_end_with_parent, args=(parent,), daemon=True).start()
    torch.set_num_threads(threads)
    os.nice(max(0, nice - os.nice(0)))
    try:
        events.put(("result", estimate_time(preset, text, device=device)))
    except Exception as e:
        events.put(("error", error_words(e)))
    events.put(("peak_mb", peak_rss_mb()))
