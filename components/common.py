"""Shared by the views: the current inputs, cached calls into `core`, formatting, safe HTML."""

from __future__ import annotations

import contextlib
import html
import json
import logging
import re
import time
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from components import own_model, store, visitor
from core.book.tokenizer import get_tokenizer
from core.errors import LossLensError, ServerBusyError, WeightsError
from core.lessons.loss import compute_loss
from core.lessons.report import book_differences, format_perplexity, perplexity_note, summarize
from core.models.corpus import load_verdict
from core.models.registry import BOOK_MODEL, BOOK_SEED, effective_seed, load_model, owner_of_key
from core.models.registry import get_spec as _registry_spec
from core.runtime.device import available_devices
from core.runtime.precision import bf16_unavailable
from core.serving.pool import ModelPool, describe_wait


def get_spec(key: str, owner: str | None = None):
    """The views ask it for a model's label: the registry's, this visitor's own model (listed by
    components/own_model.py's provider), or the "Your own model…" entry before a file is loaded.
    A trained model only if it is this visitor's (`owner`, else the session's)."""
    if key == own_model.CHOICE:
        return own_model.CHOICE_SPEC
    return _registry_spec(key, owner if owner is not None else visitor.owner())


log = logging.getLogger("losslens")

# Viridis: sequential, colour-blind safe, still ordered when printed in grey.
VIRIDIS = [
    "#440154",
    "#482878",
    "#3e4989",
    "#31688e",
    "#26828e",
    "#1f9e89",
    "#35b779",
    "#6ece58",
    "#b5de2b",
    "#fde725",
]
ACCENT = "#d55e00"  # Okabe-Ito vermillion: the target token, everywhere
NEUTRAL = "#0072b2"  # Okabe-Ito blue: the other top-k tokens
ACCENT_TEXT = "#8f3700"  # a darker vermillion for text: 7.7:1 on white (#d55e00 is 3.9:1, too low for text)


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


# --- cached calls into core --------------------------------------------------------


RETRY_AFTER = 60  # seconds before a failed model load (e.g. a download offline) is tried again


@st.cache_resource
def _pool() -> ModelPool:
    """Frozen models shared by every visitor (inference only, so threads can share them): the
    book's model, never evicted, and two more (~650 MB each; a seed change keeps the previous one
    for a quick switch back), built one at a time in arrival order at lower OS priority, so a storm
    of new seeds neither stalls a visitor whose model is kept nor holds more than three models."""
    book = [(BOOK_MODEL, BOOK_SEED, d) for d in available_devices()]
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
    place in the queue; a load that just failed fails again at once instead of retrying a download
    on every click (offline that takes ~25 s each time). A visitor's own model comes from their
    session, never from the pool (components/own_model.py)."""
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


# --- errors ------------------------------------------------------------------------


@contextlib.contextmanager
def friendly_errors():
    """Input errors become a message saying what to do; anything else a short apology."""
    try:
        yield
    except ServerBusyError as e:  # not the visitor's input: say why, and when to try again
        st.warning(md(e), icon=":material/hourglass_top:")
    except LossLensError as e:
        st.error(md(e), icon=":material/error:")
        st.caption("Fix the input in the sidebar; the views update as soon as it is valid.")
    except MemoryError:
        st.error("Out of memory: use fewer or shorter texts.", icon=":material/memory:")
    except Exception:  # the page must never show a traceback
        log.exception("unexpected error")
        st.error(
            "Something unexpected went wrong while computing this view. Try another input or "
            "reload the page; the details are in the server log.",
            icon=":material/bug_report:",
        )


# --- formatting ----------------------------------------------------------------------


def num(x, digits: int = 4) -> str:
    """A value from core.lessons.report: floats, or None / "inf" / "-inf" where float ran out."""
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return {"inf": "∞", "-inf": "−∞"}.get(x, x)
    return f"{x:.{digits}f}"


def ppl(x) -> str:
    if isinstance(x, str):
        return num(x)
    return format_perplexity(x)


def proba(p) -> str:
    """A probability in the book's e-notation (7.4541e-05), the one format of the app."""
    from components import formats  # here: formats stays free of Streamlit and of this module

    return formats.proba(p)


def esc(text: str) -> str:
    return html.escape(str(text), quote=True)


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|$<>~:&])")


def fast_toggle(key: str, device: str) -> bool:
    """The bfloat16 fast mode, offered only where it is fast; the reason shown where it is not.
    Not on a projector: hardware notes (bfloat16, CPU features) are for the laptop."""
    if "_inputs" in st.session_state and current_inputs().presentation:
        return False
    reason = bf16_unavailable(device)
    fast = st.toggle(
        "Fast mode (bfloat16)",
        key=key,
        value=False,
        disabled=reason is not None,
        help="Runs the matmuls in bfloat16 (autocast): faster where the hardware has it. Losses move "
        "in their third or fourth digit, and the result says by how much. The book's numbers are float32.",
    )
    if reason:
        st.caption(f"Fast mode is not offered: {reason}.")
    return fast and reason is None


def md(text: str) -> str:
    """User text (a file name, an error quoting the input) inside st.markdown / st.error:
    backslash-escaped so it shows literally, never as Markdown, LaTeX or HTML."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def label(summary_: dict, row: int, pos: int) -> str:
    """'Text 1 · every → ␣effort' (plain text: shown by widgets that do not parse HTML)."""
    p = summary_["texts"][row]["positions"][pos]
    return f"Text {row + 1} · position {pos} · {p['input']} → {p['target']}"


def to_float(x) -> float:
    if x is None:
        return float("nan")
    if isinstance(x, str):
        return float(x)
    return float(x)


# --- charts and downloads ------------------------------------------------------------


def plotly_config(filename: str) -> dict:
    """Plotly's toolbar saves the chart; SVG for slides, at twice the pixels for PNG."""
    return {
        "displaylogo": False,
        "toImageButtonOptions": {"format": "svg", "filename": f"losslens-{filename}", "scale": 2},
        "modeBarButtonsToRemove": ["lasso2d", "select2d"],
    }


def chart(fig, filename: str, presentation: bool = False, description: str = "") -> None:
    """A Plotly chart, then its text alternative: the lesson in a sentence, the values as a table."""
    from components import a11y  # here, not at the top: a11y formats numbers with this module

    fig.update_layout(
        margin=dict(l=10, r=10, t=40, b=10),
        font=dict(size=20 if presentation else 14),
        hoverlabel=dict(font_size=16 if presentation else 13),
    )
    st.plotly_chart(fig, config=plotly_config(filename), width="stretch")
    a11y.chart_alternative(fig, description)


def downloads(name: str, rows: list[dict], payload: dict | None = None, key: str | None = None) -> None:
    """CSV of the table shown and JSON of the values behind the view.

    The files are made on click (callables): no file is stored on every rerun, and a quick
    rerun cannot remove a file the browser is still checking (a 404 under load). A click does
    not rerun the page, so clicking one button right after the other finds its file."""

    def csv() -> bytes:
        return pd.DataFrame(rows).to_csv(index=False).encode("utf-8")

    def as_json() -> bytes:
        return json.dumps(payload if payload is not None else rows, indent=1, ensure_ascii=False).encode(
            "utf-8"
        )

    formats = [("CSV", csv, "text/csv"), ("JSON", as_json, "application/json")]
    for column, (kind, data, mime) in zip(st.columns([1, 1, 3])[:2], formats, strict=True):
        column.download_button(
            f"Download {kind}",
            data,
            file_name=f"losslens-{name}.{kind.lower()}",
            mime=mime,
            key=f"{kind.lower()}-{key or name}",
            on_click="ignore",  # no rerun: the other button's file stays valid
            icon=":material/download:",
        )


def metrics(s: dict) -> None:
    """The two numbers of section 5.1, on top of every text view."""
    c1, c2, c3, c4 = st.columns(4)
    c1.metric(
        "Loss (cross entropy)",
        num(s["loss"]),
        help="torch.nn.functional.cross_entropy(logits_flat, targets_flat)",
    )
    book = not book_differences(**_book_state()) if "_inputs" in st.session_state else True
    c2.metric("Perplexity", ppl(s["perplexity"]), help=perplexity_note(book))
    c3.metric(
        "Predicted tokens", f"{s['num_tokens']}", help="Each token but the first of every text is a target."
    )
    c4.metric("Bits per token", num(s["bits_per_token"], 3), help="loss / ln 2")
    from components import a11y  # here, not at the top: a11y formats numbers with this module

    a11y.announce(a11y.loss_announcement(s))  # heard after an edit, without re-reading the page


def _book_state() -> dict:
    i = current_inputs()
    return {"model": i.model, "seed": i.seed, "texts": i.texts, "temperature": i.temperature}


def set_current_inputs(inputs: Inputs) -> None:
    st.session_state["_inputs"] = inputs


def current_inputs() -> Inputs:
    """The sidebar's choice of this run (app.py sets it before running the page)."""
    return st.session_state["_inputs"]
