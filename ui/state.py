"""What the sidebar chose for this run, as plain values that key the caches."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st


@dataclass(frozen=True)
class Inputs:
    """What the sidebar chose: plain values, so they key the caches."""

    model: str
    seed: int
    texts: tuple[str, ...]
    top_k: int
    temperature: float
    presentation: bool = False
    device: str = "cpu"  # where the model runs (core.runtime.device); part of every cache key


def set_current_inputs(inputs: Inputs) -> None:
    st.session_state["_inputs"] = inputs


def current_inputs() -> Inputs:
    """The sidebar's choice of this run (app.py sets it before running the page)."""
    return st.session_state["_inputs"]


def has_inputs() -> bool:
    """False before app.py has run the sidebar (a helper called on its own, as in a test)."""
    return "_inputs" in st.session_state
