"""The lesson's path: the views in order, what question each answers, the notice of what differs
from the book's example, and the Previous / Next links at the end of every lesson view."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from core.errors import LossLensError
from core.lessons.report import book_differences
from core.models.registry import BOOK_MODEL, BOOK_SEED
from ui import cache, formats
from ui.sidebar import BOOK_TEXT, PRESETS

LESSON_SECTION = "The lesson (§5.1–5.2)"
EXTRA_SECTION = "Beyond the book"


@dataclass(frozen=True)
class View:
    file: str
    title: str
    icon: str
    path: str  # the URL path: shared links depend on it, so it never changes
    question: str  # the one sentence a view opens with
    minutes: int = 0  # the lesson views: about how long each takes
    gist: str = ""  # the lesson views: what the start page says each one shows, in a few words
    extends: str = ""  # the extra views: which book section or idea they build on
    try_this: str = ""  # a small thing to change and what to watch


LESSON = [
    View(
        "components/start.py",
        "Start",
        ":material/flag:",
        "start",
        "What will this lesson show, in what order, and how long will it take?",
    ),
    View(
        "components/tokens.py",
        "Tokens",
        ":material/token:",
        "tokens",
        "How does a text become the inputs the model reads and the targets it is scored on?",
        gist="text → tokens → inputs and targets",
        minutes=3,
        try_this="Try: type your own sentence in the sidebar; each token is the target of the one before.",
    ),
    View(
        "components/probabilities.py",
        "Next-token probabilities",
        ":material/bar_chart:",
        "probabilities",
        "How much probability does the model give the token that actually comes next?",
        gist="the probability of each actual next token",
        minutes=4,
        try_this="Try: pick another position, then lower the temperature and watch the favourite's bar grow.",
    ),
    View(
        "components/figure57.py",
        "Figure 5.7, step by step",
        ":material/footprint:",
        "figure-5-7",
        "How do those probabilities become one number, the loss, in six steps?",
        gist="six steps from probabilities to one loss",
        minutes=6,
        try_this="Try: raise the temperature and watch the dots move toward the uniform line at 10.82.",
    ),
    View(
        "components/cross_entropy.py",
        "Cross entropy and perplexity",
        ":material/functions:",
        "cross-entropy",
        "Why does PyTorch's cross_entropy give the same number, and what does perplexity say about it?",
        gist="the built-in loss, perplexity, and why −ln p",
        minutes=4,
        try_this="Try: set the temperature to 0.01; the six steps by hand break while cross_entropy holds.",
    ),
    View(
        "components/dataset.py",
        "Dataset losses (§5.1.3)",
        ":material/dataset:",
        "dataset",
        "What is the loss over a whole text, split into training and validation data?",
        gist="a whole book's training and validation loss",
        minutes=4,
        try_this="Try: compute The Verdict's losses, then change the train ratio and see both numbers move.",
    ),
    View(
        "components/training.py",
        "Training (§5.2)",
        ":material/model_training:",
        "training",
        "What happens to the loss when the model is trained on that text?",
        gist="the loss falling as the model learns",
        minutes=6,
        try_this="Try: start the quick run and watch the training loss fall below the uniform 10.82.",
    ),
]

EXTRAS = [
    View(
        "components/per_token.py",
        "Per-token loss",
        ":material/format_color_text:",
        "per-token-loss",
        "Which tokens of the text surprise the model most?",
        extends="§5.1.2: the loss of each target, before the mean",
    ),
    View(
        "components/temperature.py",
        "Temperature sweep",
        ":material/thermostat:",
        "temperature",
        "How does the loss change as the temperature sharpens or flattens the softmax?",
        extends="§5.3.1 temperature scaling, applied to the loss of §5.1.2",
    ),
    View(
        "components/units.py",
        "Units and averages",
        ":material/straighten:",
        "units",
        "How do nats per token become bits per token, bits per byte and perplexity?",
        extends="§5.1.2's mean over tokens, in other units",
    ),
    View(
        "components/confidence.py",
        "Confidence against surprise",
        ":material/scatter_plot:",
        "confidence",
        "Is the model surprised where it was sure of itself?",
        extends="§5.1.2's target probabilities, set against the model's own top choice",
    ),
    View(
        "components/gradient.py",
        "Gradient and a training step",
        ":material/trending_down:",
        "gradient",
        "Which way does one step of training push the logits, and does the loss fall?",
        extends="§5.2: loss.backward() and one optimizer step",
    ),
    View(
        "components/compare.py",
        "Compare models",
        ":material/compare_arrows:",
        "compare",
        "Which model finds the same text least surprising, token by token?",
        extends="§5.1.3 and §5.5: the loss of several models on the same text",
    ),
]

VIEWS = LESSON + EXTRAS


def view(path: str) -> View:
    return next(v for v in VIEWS if v.path == path)


def lesson_minutes() -> int:
    return sum(v.minutes for v in LESSON)


def neighbours(path: str) -> tuple[View | None, View | None]:
    """The lesson views before and after `path` (None at either end, or for an extra view)."""
    paths = [v.path for v in LESSON]
    if path not in paths:
        return None, None
    n = paths.index(path)
    return (LESSON[n - 1] if n > 0 else None), (LESSON[n + 1] if n + 1 < len(LESSON) else None)


def _differences(inputs) -> list[str]:
    try:
        label = formats.md(cache.get_spec(inputs.model).label)  # the visitor's own model: a file's name
    except LossLensError:
        label = None
    return book_differences(inputs.model, inputs.seed, inputs.texts, inputs.temperature, label=label)


def is_book_example(inputs) -> bool:
    return not _differences(inputs)


def back_to_book() -> None:
    """All of section 5.1's example at once; runs before the sidebar's widgets exist in the run."""
    st.session_state.model = BOOK_MODEL
    st.session_state.seed = BOOK_SEED
    st.session_state.temperature = 1.0
    st.session_state.text = BOOK_TEXT
    st.session_state.preset = next(k for k, v in PRESETS.items() if v == BOOK_TEXT)


def book_notice(inputs) -> None:
    """Say what differs from the book's example, with one button back to it."""
    diffs = _differences(inputs)
    if not diffs:
        return
    with st.container(border=True, key="book_notice"):
        c1, c2 = st.columns([4, 1.3], vertical_alignment="center")
        c1.markdown(
            "**Not the book's example:** "
            + "; ".join(diffs)
            + ". The numbers below are for this state, not the book's."
        )
        c2.button(
            "Back to the book's example",
            on_click=back_to_book,
            icon=":material/undo:",
            key="back_to_book",
        )


_SCROLL_TOP_JS = """<script>/* %s */
for (const e of document.querySelectorAll('[data-testid="stMain"], [data-testid="stAppViewContainer"]'))
  e.scrollTop = 0;
window.scrollTo(0, 0);</script>"""


def sidebar_menu() -> None:
    """The two sections in the sidebar as headed groups of links, in the lesson's order."""
    for section, views in ((LESSON_SECTION, LESSON), (EXTRA_SECTION, EXTRAS)):
        with st.sidebar.container(key=f"ll_nav_{'lesson' if views is LESSON else 'extras'}"):
            st.markdown(f"**{section}**")
            for v in views:
                st.page_link(v.file, label=v.title, icon=v.icon)
    st.sidebar.divider()


def scroll_to_top(path: str) -> None:
    """A Next link clicked at the bottom of one view opens the next one at its top, not at the
    old scroll position (Streamlit keeps the scroll of the main area across pages)."""
    # The container is there on every run, so the elements after it keep their places (a button
    # that moved would be drawn anew and lose the keyboard focus); only its content changes.
    with st.container(key="ll_scroll_top"):  # hidden by the app's CSS (style.py); the script still runs
        if st.session_state.get("_ll_view") == path:
            st.html('<span class="ll-sr"> </span>')
            return
        n = st.session_state["_ll_views_opened"] = st.session_state.get("_ll_views_opened", 0) + 1
        st.session_state["_ll_view"] = path
        st.html(_SCROLL_TOP_JS % f"{path} {n}", unsafe_allow_javascript=True)


def open_view(path: str, inputs=None) -> None:
    """A view's heading, its question, the book section it extends, and the book notice."""
    v = view(path)
    scroll_to_top(path)
    st.header(v.title, anchor=False)
    st.markdown(f"*{v.question}*")
    if v.extends:
        st.caption(f"Beyond the book: extends {v.extends}.")
    if inputs is not None:
        book_notice(inputs)


def try_this(path: str) -> None:
    v = view(path)
    if v.try_this:
        st.caption(v.try_this)


def footer(path: str) -> None:
    """'← Previous: title' and 'Next: title →' as real links: Tab and Enter reach them, and they
    sit on the page, so they work with the sidebar collapsed and in presentation mode."""
    before, after = neighbours(path)
    if before is None and after is None:
        return
    st.divider()
    c1, c2 = st.columns(2)
    if before is not None:
        c1.page_link(before.file, label=f"← Previous: {before.title}")
    if after is not None:
        with c2.container(horizontal_alignment="right"):
            st.page_link(after.file, label=f"Next: {after.title} →")
