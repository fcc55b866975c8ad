"""Dataset losses kept for every visitor: one store and one key, so each view finds what another computed."""

from __future__ import annotations

import hashlib
from dataclasses import asdict

import streamlit as st

from core.models.loaders import LoaderSettings
from core.models.registry import effective_seed

MAX_STORED = 32  # finished results kept for every visitor: a workshop computes the same thing


@st.cache_resource
def _results() -> dict:
    return {}


def dataset_key(
    model: str,
    seed: int,
    text: str,
    settings: LoaderSettings,
    num_batches: int | None,
    device: str = "cpu",
    fast: bool = False,
) -> tuple:
    """The key of one dataset evaluation: the Dataset and Compare views find each other's results
    (float32 ones: the fast mode's bfloat16 results are kept apart)."""
    sha = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    key = (model, effective_seed(model, seed), sha, tuple(asdict(settings).values()), num_batches, device)
    return (*key, "bfloat16") if fast else key


def get(key: tuple) -> dict | None:
    return _results().get(key)


def put(key: tuple, result: dict) -> None:
    """Keep a finished evaluation for every visitor (the oldest goes beyond MAX_STORED)."""
    store = _results()
    if key not in store and len(store) >= MAX_STORED:
        store.pop(next(iter(store)), None)
    store[key] = result


def forget(model: str) -> None:
    """Drop the results of `model` (saved again under its name by a resumed run)."""
    results = _results()
    for k in [k for k in list(results) if k[0] == model]:
        results.pop(k, None)


def clear() -> None:
    """Forget every stored result (tests start each from an empty store, as a new server does)."""
    _results().clear()
