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

from components import store
from core.corpus import load_verdict
from core.errors import LossLensError, ServerBusyError, WeightsError
from core.loss import compute_loss
from core.pool import ModelPool, describe_wait
from core.registry import effective_seed, get_spec, load_model
from core.report import PERPLEXITY_NOTE, format_perplexity, summarize
from core.tokenizer import ENDOFTEXT_ID, get_tokenizer

__all__ = ["get_spec"]  # re-exported: the views ask it for a model's label

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
    device: str = "cpu"  # where the model runs (core.device); part of every cache key


# --- cached calls into core --------------------------------------------------------


RETRY_AFTER = 60  # seconds before a failed model load (e.g. a download offline) is tried again


@st.cache_resource
def _pool() -> ModelPool:
    """Frozen models shared by every visitor (inference only, so threads can share them): two kept
    (~650 MB each; a seed change keeps the previous one for a quick switch back), built one at a
    time in arrival order, so a storm of new seeds never stalls a visitor whose model is kept."""
    return ModelPool(load_model, size=2)  # keyed by load_model's (key, seed, device)


@st.cache_resource
def _failed_loads() -> dict:
    return {}


def get_model(key: str, seed: int, device: str = "cpu"):
    """The shared model on `device`. While its build waits behind others the visitor sees their
    place in the queue; a load that just failed fails again at once instead of retrying a download
    on every click (offline that takes ~25 s each time)."""
    seed = effective_seed(key, seed)
    pool = _pool()
    if pool.kept(key, seed, device):
        return pool.get(key, seed, device)
    failed = _failed_loads()
    if (key, seed) in failed and time.monotonic() - failed[(key, seed)][0] < RETRY_AFTER:
        raise WeightsError(failed[(key, seed)][1])
    spec = get_spec(key)
    what = f"Building the model for seed {seed}" if spec.seeded else f"Loading {spec.label}"
    box = st.empty()

    def on_wait(ahead: int) -> None:
        box.info(describe_wait(what, ahead), icon=":material/hourglass_top:")

    try:
        with st.spinner(f"{what} (once; a pretrained model downloads first)…"):
            return pool.get(key, seed, device, on_wait=on_wait)
    except LossLensError as e:
        failed[(key, seed)] = (time.monotonic(), str(e))
        raise
    finally:
        box.empty()


@st.cache_resource
def tokenizer():
    return get_tokenizer()


@st.cache_data(max_entries=64, ttl=3600, show_spinner=False)
def loss_summary(
    key: str, seed: int, texts: tuple[str, ...], top_k: int, temperature: float, device: str = "cpu"
) -> dict:
    """The six steps as plain data (top-k only, never a full-vocabulary array)."""
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
    """A value from core.report: floats, or None / "inf" / "-inf" where float ran out."""
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
    if p is None or isinstance(p, str):
        return num(p)
    return f"{p:.4%}" if p >= 1e-4 else f"{p:.3e}"


def esc(text: str) -> str:
    return html.escape(str(text), quote=True)


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|$<>~:&])")


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
    from components import a11y

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
    c2.metric("Perplexity", ppl(s["perplexity"]), help=PERPLEXITY_NOTE)
    c3.metric(
        "Predicted tokens", f"{s['num_tokens']}", help="Each token but the first of every text is a target."
    )
    c4.metric("Bits per token", num(s["bits_per_token"], 3), help="loss / ln 2")
    from components import a11y

    a11y.announce(a11y.loss_announcement(s))  # heard after an edit, without re-reading the page


# --- styling -------------------------------------------------------------------------

_BASE_CSS = """
<style>
.ll-chip{display:inline-flex;flex-direction:column;align-items:center;margin:3px 2px;padding:4px 8px;
  border-radius:8px;border:1px solid rgba(0,114,178,.35);background:rgba(0,114,178,.07);
  font-family:ui-monospace,SFMono-Regular,Menlo,monospace;line-height:1.2;vertical-align:top}
.ll-chip .p{font-size:1.05em;white-space:pre}
.ll-chip .i{font-size:.72em;opacity:.7}
.ll-chip.bytes{border-style:dashed;border-color:#cc79a7;background:rgba(204,121,167,.10)}
.ll-chip.special{border-color:#e69f00;background:rgba(230,159,0,.14)}
.ll-chip.target{border-color:#d55e00;background:rgba(213,94,0,.10)}
.ll-chip.empty{visibility:hidden}
[data-testid="stMainBlockContainer"]{padding-top:2.5rem}
.ll-row{display:flex;flex-wrap:wrap;align-items:flex-start;gap:2px;margin:.2em 0 .6em 0}
.ll-rowname{font-weight:600;font-size:.9em;align-self:center;margin-right:8px}
.ll-shift{gap:6px 3px;margin-bottom:1.2em}
.ll-col{display:flex;flex-direction:column;align-items:center}
.ll-head{align-items:flex-end;justify-content:space-between;font-weight:600;font-size:.9em;
  margin-right:8px;padding:10px 0;align-self:stretch}
.ll-arrow{color:#d55e00;font-size:1.2em;line-height:1}
ol.ll-flow{display:flex;flex-wrap:nowrap;align-items:stretch;gap:4px 22px;margin:.4em 0 1em 0!important;
  padding:0!important;list-style:none}
.ll-step{flex:1 1 0;min-width:0;border-radius:10px;padding:8px 10px;border:2px solid rgba(128,128,128,.35);
  font-size:.85em;opacity:.7;hyphens:auto;position:relative;margin:0}
/* The arrow between steps is drawn, not read: the list already says the order. */
.ll-flow .ll-step+.ll-step::before{content:"→" / "";position:absolute;left:-19px;top:50%;
  transform:translateY(-50%);font-size:1.3em;opacity:.6;color:#111}
/* Narrow windows and 200 % zoom: the six steps wrap onto rows of three instead of squeezing. */
@media (max-width:900px){ol.ll-flow{flex-wrap:wrap}.ll-flow .ll-step{flex:1 1 26%}
  .ll-flow .ll-step:nth-child(4)::before{content:none}}
.ll-step b{overflow-wrap:break-word}
.ll-step.done{opacity:.9}
.ll-step.now{border-color:#d55e00;background:rgba(213,94,0,.10);opacity:1;
  box-shadow:0 0 0 2px rgba(213,94,0,.25)}
.ll-step b{display:block;font-size:1.02em}
.ll-step code{font-size:.85em}
.ll-heat{line-height:2.3;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:1.05em}
.ll-heat span{display:inline-block;padding:0 2px;margin:2px 0;border-radius:4px;white-space:pre;
  cursor:help;line-height:1.7}
.ll-legend{display:flex;align-items:center;gap:8px;font-size:.85em;margin:.5em 0}
.ll-legend .bar{width:260px;max-width:40vw;height:12px;border-radius:6px;
  background:linear-gradient(90deg,#440154,#3e4989,#26828e,#35b779,#b5de2b,#fde725)}
.ll-tablewrap{overflow-x:auto;max-width:100%}
.ll-table{border-collapse:collapse;font-size:.85em;margin:.2em 0 .6em 0}
.ll-table caption{text-align:left;font-weight:600;padding:4px 0}
.ll-table th,.ll-table td{border:1px solid #c8ccd4;padding:2px 8px;text-align:right;white-space:pre}
.ll-table th[scope=row]{text-align:left;font-weight:400;
  font-family:ui-monospace,SFMono-Regular,Menlo,monospace}
/* Accessibility. Text for screen readers only: */
.ll-sr{position:absolute!important;width:1px;height:1px;padding:0;margin:-1px;overflow:hidden;
  clip:rect(0,0,0,0);white-space:nowrap;border:0}
/* A visible focus ring on every control reached with the keyboard (Okabe-Ito blue, 5.2:1 on white). */
:focus-visible{outline:3px solid #0072b2!important;outline-offset:2px!important}
/* Heatmap tokens: the hover details also show on keyboard focus (the same text screen readers hear). */
.ll-heat .tok{position:relative}
.ll-heat .tok:hover::after,.ll-heat .tok:focus-visible::after{content:attr(data-tip);position:absolute;
  left:0;top:100%;z-index:20;min-width:16em;max-width:28em;white-space:pre-line;padding:6px 8px;
  border-radius:6px;background:#fff;color:#111;border:1px solid #555;font-size:.8em;line-height:1.35;
  box-shadow:0 2px 8px rgba(0,0,0,.25)}
/* Code colours with at least 7:1 on the code background (Streamlit's defaults go down to 2.5:1). */
[data-testid="stCode"] .token.comment,[data-testid="stCode"] .token.prolog,
[data-testid="stCode"] .token.punctuation{color:#4a5060}
[data-testid="stCode"] .token.number,[data-testid="stCode"] .token.boolean,
[data-testid="stCode"] .token.constant,
[data-testid="stCode"] .token.symbol,[data-testid="stCode"] .token.regex{color:#0b5e4f}
[data-testid="stCode"] .token.string,[data-testid="stCode"] .token.char,
[data-testid="stCode"] .token.attr-value{color:#00613f}
[data-testid="stCode"] .token.operator,[data-testid="stCode"] .token.entity{color:#8f3700}
[data-testid="stCode"] .token.keyword,[data-testid="stCode"] .token.function,
[data-testid="stCode"] .token.builtin,
[data-testid="stCode"] .token.class-name,[data-testid="stCode"] .token.tag{color:#004f7c}
[data-testid="stCode"] .token.property,[data-testid="stCode"] .token.variable,
[data-testid="stCode"] .token.url,
[data-testid="stCode"] .token.decorator,[data-testid="stCode"] .token.atrule{color:#6b2f8a}
/* Captions: Streamlit fades them with opacity .6, which takes their inline code down to 3:1. A solid grey
   instead (8.5:1 on white); inline code keeps the theme's code colour (7.3:1). */
[data-testid="stCaptionContainer"]{opacity:1!important}
[data-testid="stCaptionContainer"],[data-testid="stCaptionContainer"] p{color:#4d4d4d}
/* While a run is in progress Streamlit fades the previous output to a third (text down to 1.6:1). The live
   training view reruns every second, so it would flicker unreadably: output stays solid; the "Running"
   indicator in the header still shows activity. */
[data-stale="true"]{opacity:1!important}
/* A disabled select (the Device picker with one device) fades its value to 2.6:1; a disabled control
   is exempt from WCAG contrast, but its value is still information: keep it readable (6.9:1). */
[data-testid="stSidebar"] span[aria-hidden="true"]:has(> [data-testid="stMarkdownContainer"]),
[data-testid="stSidebar"] span[aria-hidden="true"] > [data-testid="stMarkdownContainer"]{opacity:1!important}
[data-testid="stSidebar"] span[aria-hidden="true"] > [data-testid="stMarkdownContainer"] p{
  color:#4d4d4d!important}
/* Long code lines wrap instead of scrolling sideways (a scrolling box the keyboard cannot reach, and
   unreadable at 200 % zoom). */
[data-testid="stCode"] pre,[data-testid="stCode"] pre code{white-space:pre-wrap!important;
  overflow-wrap:anywhere}
/* prefers-reduced-motion: no animation anywhere; Play still changes the step, without transitions. */
@media (prefers-reduced-motion: reduce){*,*::before,*::after{animation-duration:0s!important;
  animation-iteration-count:1!important;transition-duration:0s!important;transition-delay:0s!important;
  scroll-behavior:auto!important}}
</style>
"""

_PRESENTATION_CSS = """
<style>
html, body, [data-testid="stAppViewContainer"] {font-size: 22px;}
[data-testid="stMetricValue"] {font-size: 3.2rem !important;}
[data-testid="stMetricLabel"] p {font-size: 1.25rem !important;}
/* Less chrome, but the button that reopens the collapsed sidebar stays (it lives in the header). */
[data-testid="stHeader"] {background: transparent !important;}
[data-testid="stMainMenu"], [data-testid="stToolbarActions"], [data-testid="stStatusWidget"],
[data-testid="stDecoration"],
footer {display: none !important;}
.block-container {padding-top: 1rem !important; max-width: 100% !important;}
.ll-step {font-size: .62em; padding: 6px 8px;}
/* A projector washes colours out: all text at >= 7:1 (WCAG AAA), no faded steps or captions. */
.ll-step, .ll-chip .i, [data-testid="stCaptionContainer"],
[data-testid="stCaptionContainer"] * {opacity: 1 !important;}
[data-testid="stCaptionContainer"], [data-testid="stCaptionContainer"] *, [data-testid="stMetricLabel"] *,
[data-testid="stMarkdownContainer"], .ll-step, .ll-step * {color: #111111 !important;}
.ll-step.now {border-width: 4px;}
[data-testid="stMain"] button:not(:disabled) * {opacity: 1 !important;}  /* the faded shortcut hints */
.ll-arrow {color: #8f3700 !important;}
/* The heatmap's mid viridis colours cannot carry 7:1 text: dark text on white,
   the colour as a thick underline. */
.ll-heat .tok {background: #ffffff !important; color: #111111 !important;
  border-bottom: .35em solid var(--heat);}
</style>
"""


def apply_style(presentation: bool) -> None:
    st.html(_BASE_CSS + (_PRESENTATION_CSS if presentation else ""))


def html_block(body: str) -> None:
    """Render HTML built from escaped pieces (callers html.escape every user string)."""
    st.html(body)


def chip(piece: str, token_id: int | None, kind: str = "", title: str = "") -> str:
    """One token as a chip: the visible piece over its id. `piece` is escaped here.
    A screen reader hears one image named "token ␣effort, id 3626" instead of two loose strings."""
    tid = "" if token_id is None else f'<span class="i">{token_id}</span>'
    t = f' title="{esc(title)}"' if title else ""
    name = (
        ("target " if "target" in kind else "token ")
        + piece
        + ("" if token_id is None else f", id {token_id}")
    )
    return (
        f'<span class="ll-chip {kind}" role="img" aria-label="{esc(name)}"{t}>'
        f'<span class="p">{esc(piece)}</span>{tid}</span>'
    )


def chip_kind(token_id: int, is_bytes: bool) -> str:
    return "special" if token_id == ENDOFTEXT_ID else ("bytes" if is_bytes else "")


def set_current_inputs(inputs: Inputs) -> None:
    st.session_state["_inputs"] = inputs


def current_inputs() -> Inputs:
    """The sidebar's choice of this run (app.py sets it before running the page)."""
    return st.session_state["_inputs"]
