"""The page's look: its colours, the app's CSS (base and presentation mode) and the HTML pieces
the views build from escaped text (token chips, blocks of HTML)."""

from __future__ import annotations

import streamlit as st

from core.book.tokenizer import ENDOFTEXT_ID
from ui.formats import esc

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
/* A metric's label and value wrap instead of ending in an ellipsis ("Loss (cross entro…", "10.…"). */
[data-testid="stMetricLabel"], [data-testid="stMetricLabel"] *, [data-testid="stMetricValue"],
[data-testid="stMetricValue"] *{white-space:normal!important;overflow:visible!important;
  text-overflow:clip!important}
[data-testid="stMetricValue"]{overflow-wrap:anywhere;line-height:1.15}
.st-key-ll_scroll_top{display:none!important}
/* A wider open sidebar: the model picker shows a whole model name ("Untrained GPT-2 124M (book,
   section 5.1)") instead of cutting it off. Collapsed, it keeps Streamlit's own width (none). */
[data-testid="stSidebar"][data-collapsed="false"]{min-width:23rem!important;max-width:23rem!important}
/* prefers-reduced-motion: no animation anywhere; Play still changes the step, without transitions. */
@media (prefers-reduced-motion: reduce){*,*::before,*::after{animation-duration:0s!important;
  animation-iteration-count:1!important;transition-duration:0s!important;transition-delay:0s!important;
  scroll-behavior:auto!important}}
</style>
"""

_PRESENTATION_CSS = """
<style>
/* 22px on a 1280-wide projector, and the same layout scaled on a wider one (33px at 1920). */
html, body, [data-testid="stAppViewContainer"] {font-size: max(22px, 1.71875vw);}
[data-testid="stMetricValue"] {font-size: 2.4rem !important;}
[data-testid="stMetricLabel"] p {font-size: 1.1rem !important;}
[data-testid="stMainBlockContainer"] h2 {font-size: 1.9rem !important; padding-top: 0 !important;}
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
/* A primary button: white on a darker blue (8.6:1), not the theme's #0072b2 (5.2:1 with white). */
[data-testid="stMain"] button[kind="primary"] {background: #004f7c !important;
  border-color: #004f7c !important;}
[data-testid="stMain"] button[kind="primary"] * {color: #ffffff !important;}
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
