"""The controls. Every one is bound to the URL, so a link reopens the same state."""

from __future__ import annotations

import math

import streamlit as st

from core.errors import LossLensError
from core.lessons.loss import MAX_TEXTS
from core.models.registry import available_models
from core.runtime.device import DEVICE_ENV, available_devices, describe, resolve_device
from ui import own_model, visitor
from ui.formats import md
from ui.state import Inputs

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
# The sidebar's numbers a link may set: (parameter, what it is, lowest, highest, default, whole).
URL_NUMBERS = (
    ("seed", "Seed", 0, 2**31 - 1, 123, True),
    ("top_k", "Top-k", 1, MAX_TOP_K, 10, True),
    ("temperature", "Temperature", 0.001, 100.0, 1.0, False),
)


def _shown(value: str) -> str:
    """A link's value quoted in a notice: short, on one line (the notice escapes it)."""
    value = " ".join(str(value).split())
    return value if len(value) <= 40 else value[:39] + "…"


def url_corrections(params, models: dict, devices: list[str]) -> list[str]:
    """What a link asked for that this page cannot show, and what it shows instead: Streamlit
    drops an invalid value silently, so the visitor is told."""
    notes = []
    for key, what, lo, hi, default, whole in URL_NUMBERS:
        raw = params.get(key)
        if raw is None:
            continue
        try:
            value = int(raw) if whole else float(raw)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not lo <= value <= hi:
            kind = "a whole number" if whole else "a number"
            notes.append(f"{what} “{_shown(raw)}” is not {kind} from {lo} to {hi}: using {default}.")
    model = params.get("model")
    if model is not None and model not in models:
        first = next(iter(models))
        notes.append(f"Model “{_shown(model)}” is not one of the models here: showing {models[first].label}.")
    preset = params.get("preset")
    if preset is not None and "text" not in params and preset not in PRESETS:
        notes.append(f"Preset “{_shown(preset)}” is not one of the presets: showing the book example.")
    device = params.get("device")
    if device is not None and device not in devices:
        notes.append(
            f"Device “{_shown(device)}” is not available here: using {describe(_default_device(devices))}."
        )
    return notes


def _url_notice(slot, current: tuple) -> None:
    """The corrections of the link that opened this session, shown (in `slot`, atop the sidebar)
    until the visitor changes an input."""
    notes = st.session_state.get("_url_notes")
    if not notes:
        return
    first = st.session_state.setdefault("_url_notes_inputs", current)
    if first != current:
        st.session_state["_url_notes"] = []
        return
    slot.info(md("The link was corrected: " + " ".join(notes)), icon=":material/link_off:")


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

    own_model.apply_pending_choice()
    # On a shared server only this visitor's trained models; and their own model, if they loaded one.
    models = available_models(visitor.owner())
    if "_url_notes" not in st.session_state:  # first run: before the widgets drop bad values
        st.session_state["_url_notes"] = url_corrections(st.query_params, models, available_devices())
    notice = sb.empty()
    # The URL carries the model's stable key, not its label (a trained model's label changes).
    if "model" not in st.session_state and st.query_params.get("model") in models:
        st.session_state.model = st.query_params["model"]
    model = sb.selectbox(
        "Model",
        [*models, own_model.CHOICE],
        format_func=lambda k: models[k].label if k in models else own_model.CHOICE_LABEL,
        key="model",
        help="Models come from core.models.registry; trained models appear here once saved. "
        "Your own model… loads a model you trained with the book's code, for this session only.",
    )
    if model == next(iter(models)) or own_model.is_own(model):  # an own model means nothing to a link
        st.query_params.pop("model", None)
    else:
        st.query_params["model"] = model
    if own_model.is_own(model):
        own_model.panel(sb)
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
    seeded = models[model].seeded if model in models else False
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
    sb.caption(models[model].description if model in models else own_model.CHOICE_SPEC.description)
    _url_notice(notice, (model, seed, text, top_k, temperature, device))
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
