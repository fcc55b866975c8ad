"""The controls. Every one is bound to the URL, so a link reopens the same state."""

from __future__ import annotations

import streamlit as st

from core.device import DEVICE_ENV, available_devices, describe, resolve_device
from core.errors import LossLensError
from core.loss import MAX_TEXTS
from core.registry import available_models

from .common import Inputs

BOOK_TEXT = "every effort moves you\nI really like chocolate"
PRESETS = {
    "Book example (figure 5.7)": BOOK_TEXT,
    "Book, first text only": "every effort moves you",
    "The Verdict, first sentence": (
        "I HAD always thought Jack Gisburn rather a cheap genius--though a good fellow "
        "enough--so it was no great surprise to me to hear that, in the height of his glory, "
        "he had dropped his painting, married a rich widow, and established himself in a "
        "villa on the Riviera."
    ),
    "Repetition (a trained model finds it easy)": (
        "the cat sat on the mat. the cat sat on the mat. the cat sat on the mat."
    ),
    "Ragged batch (padding)": "Hi there\nThe quick brown fox jumps over the lazy dog",
    "Whitespace, emoji, bytes": "Hello,   world!\ttab\n🙂 café naïve 😀 漢字",
}
CUSTOM = "Custom text"
MAX_TOP_K = 50  # the charts show top-k bars; more is unreadable (and heavier to send)


def _match(text: str) -> str:
    return next((name for name, value in PRESETS.items() if value == text), CUSTOM)


def _on_preset() -> None:
    name = st.session_state.get("preset")
    if name in PRESETS:
        st.session_state.text = PRESETS[name]


def _on_text() -> None:
    st.session_state.preset = _match(st.session_state.get("text", ""))


def split_texts(text: str) -> tuple[str, ...]:
    """One text per line; blank lines are ignored (a trailing newline is no new text)."""
    return tuple(line for line in (text or "").replace("\r\n", "\n").split("\n") if line.strip())


def render() -> Inputs:
    sb = st.sidebar
    if "text" not in st.session_state:  # first run of a session: the link decides
        if "text" in st.query_params:  # the text wins; the preset shown must match it
            st.session_state.preset = _match(st.query_params["text"])
        elif st.query_params.get("preset") in PRESETS:  # a link may name only a preset
            st.session_state.text = PRESETS[st.query_params["preset"]]

    models = available_models()
    # The URL carries the model's stable key, not its label (a trained model's label changes).
    if "model" not in st.session_state and st.query_params.get("model") in models:
        st.session_state.model = st.query_params["model"]
    model = sb.selectbox(
        "Model",
        list(models),
        format_func=lambda k: models[k].label,
        key="model",
        help="Models come from core.registry; trained models appear here once saved.",
    )
    if model == next(iter(models)):
        st.query_params.pop("model", None)
    else:
        st.query_params["model"] = model
    sb.selectbox(
        "Preset",
        [*PRESETS, CUSTOM],
        key="preset",
        bind="query-params",
        on_change=_on_preset,
        help="The book example is figure 5.7's batch of two texts.",
    )
    text = sb.text_area(
        "Texts (one per line)",
        value=BOOK_TEXT,
        key="text",
        bind="query-params",
        on_change=_on_text,
        height=130,
        help=f"Each line is one row of the batch (at most {MAX_TEXTS}). Press Ctrl+Enter to apply.",
    )
    c1, c2 = sb.columns(2)
    top_k = c1.number_input("Top-k", 1, MAX_TOP_K, 10, step=1, key="top_k", bind="query-params")
    temperature = c2.number_input(
        "Temperature",
        min_value=0.001,
        max_value=100.0,
        value=1.0,
        step=0.1,
        format="%.3f",
        key="temperature",
        bind="query-params",
        help="Divides the logits before the softmax. Low values sharpen, high values flatten.",
    )
    seeded = models[model].seeded if model in models else True
    seed = sb.number_input(
        "Seed",
        0,
        2**31 - 1,
        123,
        step=1,
        key="seed",
        bind="query-params",
        disabled=not seeded,
        help="torch.manual_seed(seed) before building the untrained model; the book uses 123.",
    )
    devices = available_devices()
    device = sb.selectbox(
        "Device",
        devices,
        index=devices.index(_default_device(devices)),
        format_func=describe,
        key="device",
        bind="query-params",
        disabled=len(devices) == 1,
        help="Where the model runs. The CPU gives the book's numbers exactly; a GPU agrees within 1e-4 "
        f"(TF32 off). A server sets its default with {DEVICE_ENV}."
        + ("" if len(devices) > 1 else " No CUDA or MPS GPU was found on this server."),
    )
    presentation = sb.toggle(
        "Presentation mode",
        key="presentation",
        bind="query-params",
        help="Larger type and less chrome for a projector; figure 5.7 goes one step at a time.",
    )
    sb.caption(models[model].description if model in models else "")
    return Inputs(
        model=model,
        seed=int(seed),
        texts=split_texts(text),
        top_k=int(top_k),
        temperature=float(temperature),
        presentation=bool(presentation),
        device=device,
    )


def _default_device(devices: list[str]) -> str:
    """$LOSSLENS_DEVICE or auto, as a choice of the picker (a bad variable falls back to auto)."""
    try:
        return resolve_device().type
    except LossLensError:
        return devices[0]
