"""torch's one global generator, shared safely: the lock, a run's own stream, seeded builds.

torch has one global generator per process. Whoever draws from it for a result that must be
reproducible (the untrained model's seeded init, a training step in a server thread) holds
RNG_LOCK, so two threads never interleave their draws.
"""

from __future__ import annotations

import contextlib
import threading

import torch

from core.book.model import GPT_CONFIG_124M, GPTModel

RNG_LOCK = threading.RLock()


@contextlib.contextmanager
def own_rng(stream):
    """Run a piece of work on `stream`'s own random numbers (any object with `rng_now`).

    Under RNG_LOCK the stream's generator state is swapped in, and saved back at the end, so
    a training run in one thread and a seeded build in another never disturb each other: the
    untrained model keeps the book's weights and the run keeps the book's shuffle and dropout.
    """
    with RNG_LOCK:
        if stream.rng_now is not None:
            torch.set_rng_state(stream.rng_now)
        try:
            yield
        finally:
            stream.rng_now = torch.get_rng_state()


@contextlib.contextmanager
def borrowed_rng():
    """Draw from the global generator for throwaway work (a timing's model init and dropout), then
    put it back as it was. Under RNG_LOCK for that piece of work only: a seeded build in another
    thread waits for one training step of the timing, not for all of it (10-40 s, the book preset)."""
    with RNG_LOCK:
        state = torch.get_rng_state()
        try:
            yield
        finally:
            torch.set_rng_state(state)


def build_untrained_model(seed: int = 123, cfg: dict | None = None) -> GPTModel:
    """The book's `torch.manual_seed(seed); model = GPTModel(cfg)`, frozen: eval mode, no gradients
    (safe to share; core.serving.frozen makes it faster where it is served)."""
    torch.manual_seed(seed)
    return GPTModel(cfg or GPT_CONFIG_124M).eval().requires_grad_(False)


def seeded_untrained_model(seed: int) -> GPTModel:
    """The book's untrained 124M model; the seed and the init back to back under RNG_LOCK.
    build_untrained_model is looked up per call: tests hand in a built one."""
    with RNG_LOCK:
        return build_untrained_model(seed)


def seeded_fresh_model(cfg: dict, seed: int, stream) -> GPTModel:
    """The book's `torch.manual_seed(seed); model = GPTModel(cfg)`, trainable, on `stream`."""
    with own_rng(stream):
        torch.manual_seed(seed)
        return GPTModel(cfg)
