"""What every visitor shares: the model pool, the tokenizer, the loss summary and The Verdict,
cached in front of `core` so a view never computes what another already has."""

from __future__ import annotations

import time

import streamlit as st

from core.errors import LossLensError, WeightsError
from core.lessons.report import summarize
from core.models.corpus import load_verdict
from core.models.registry import BOOK_MODEL, BOOK_SEED, effective_seed, load_model, owner_of_key
from core.models.registry import get_spec as _registry_spec
from core.runtime.device import available_devices
from core.runtime.tokenizer_files import get_tokenizer
from core.serving import shared_weights
from core.serving.pool import ModelPool, describe_wait
from core.serving.requests import compute_loss
from ui import own_model, store, visitor
from ui.state import Inputs

RETRY_AFTER = 60  # seconds before a failed model load (e.g. a download offline) is tried again


def get_spec(key: str, owner: str | None = None):
    """The views ask it for a model's label: the registry's, this visitor's own model (listed by
    ui/own_model.py's provider), or the "Your own model…" entry before a file is loaded.
    A trained model only if it is this visitor's (`owner`, else the session's)."""
    if key == own_model.CHOICE:
        return own_model.CHOICE_SPEC
    return _registry_spec(key, owner if owner is not None else visitor.owner())


@st.cache_resource
def _pool() -> ModelPool:
    """Frozen models shared by every visitor (inference only, so threads can share them): the
    book's model, never evicted, and two more (a seed change keeps the previous one for a quick
    switch back), built one at a time in arrival order at lower OS priority, so a storm of new
    seeds neither stalls a visitor whose model is kept nor holds more than three models."""
    book = [(BOOK_MODEL, BOOK_SEED, d) for d in available_devices()]
    shared_weights.install()  # LOSSLENS_SHARED_WEIGHTS=1 (a room): the book's weights, one copy per machine
    return ModelPool(_load, size=2, pinned=book)  # keyed by load_model's (key, seed, device)


def _load(key: str, seed: int, device: str):
    """The pool's loader, which runs outside the visitor's session: get_model checked that the
    key is the visitor's own; an owner's key names its owner's folder."""
    return load_model(key, seed, device, owner=owner_of_key(key))


@st.cache_resource
def _failed_loads() -> dict:
    return {}


def get_model(key: str, seed: int, device: str = "cpu"):
    """The shared model on `device`. While its build waits behind others the visitor sees their
    place in the queue; a load that just failed fails again at once instead of retrying a slow
    download on every click. A visitor's own model comes from their session, never from the pool
    (ui/own_model.py)."""
    if own_model.is_own(key):
        return own_model.get_model(key, device)
    seed = effective_seed(key, seed)
    spec = get_spec(key)  # first: a kept model is served only to its owner
    pool = _pool()
    if pool.kept(key, seed, device):
        return pool.get(key, seed, device)
    failed = _failed_loads()
    if (key, seed) in failed and time.monotonic() - failed[(key, seed)][0] < RETRY_AFTER:
        raise WeightsError(failed[(key, seed)][1])
    what = f"Building the model for seed {seed}" if spec.seeded else f"Loading {spec.label}"
    box = st.empty()

    def on_wait(ahead: int) -> None:
        box.info(describe_wait(what, ahead), icon=":material/hourglass_top:")

    try:
        # The build goes on in the pauses between other visitors' requests (core/serving/pool.py).
        with st.spinner(spinner_text(what, spec.seeded)):
            return pool.get(key, seed, device, on_wait=on_wait)
    except LossLensError as e:
        failed[(key, seed)] = (time.monotonic(), str(e))
        raise
    finally:
        box.empty()


def spinner_text(what: str, seeded: bool) -> str:
    """An untrained model is built from its seed: only a model with weights may download them."""
    if seeded:
        return f"{what} (once, between other visitors' requests)…"
    return f"{what} (once, between other visitors' requests; its weights download first if missing)…"


@st.cache_resource
def tokenizer():
    return get_tokenizer()


@st.cache_data(max_entries=64, ttl=3600, show_spinner=False)
def loss_summary(
    key: str, seed: int, texts: tuple[str, ...], top_k: int, temperature: float, device: str = "cpu"
) -> dict:
    """The six steps as plain data (top-k only, never a full-vocabulary array). Shared by every
    visitor: an own model's key is its content's digest, so only the same weights find its entry."""
    result = compute_loss(get_model(key, seed, device), list(texts), top_k, temperature, tokenizer())
    s = summarize(result, tokenizer())
    for t in s["texts"]:
        for p in t["positions"]:
            # Each position's context is the text's tokens[: position + 1]: kept once, not n times
            # (a 257-token text would otherwise cache 33,000 strings).
            del p["context"]
    return s


def summary(inputs: Inputs, temperature: float | None = None, model: str | None = None) -> dict:
    """The sidebar's texts through its model (or `model`), at its temperature (or `temperature`)."""
    key = model or inputs.model
    t = inputs.temperature if temperature is None else temperature
    return loss_summary(key, effective_seed(key, inputs.seed), inputs.texts, inputs.top_k, t, inputs.device)


@st.cache_data(show_spinner="Loading The Verdict…", ttl=3600)
def verdict() -> str:
    return load_verdict()


def forget_model(key: str) -> None:
    """A model saved again under its key (a resumed run) must not be served from any cache."""
    _pool().forget(lambda k: k[0] == key)
    loss_summary.clear()
    store.forget(key)
