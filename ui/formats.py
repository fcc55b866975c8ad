"""One way to print each kind of number, everywhere in the app (views, hover text, tables, exports),
and user text escaped so it shows literally.

Probabilities use the book's e-notation (PyTorch prints `tensor([7.4541e-05, ...])`): 4 digits after
the point, always with an exponent, so 7.4541e-05 never appears as 0.0000745, 7.454e-5 or 0.0075 %.
Free of Streamlit: the text alternatives and their tests use it as it is.
"""

from __future__ import annotations

import html
import math
import re

from core.lessons.report import format_perplexity

PROBA_DIGITS = 4  # digits after the point: the book's tensor printout
MAX_DIGITS = 12


def _special(x) -> str | None:
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return {"inf": "∞", "-inf": "−∞"}.get(x, x)
    if isinstance(x, float) and math.isnan(x):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return None


def proba(p, digits: int = PROBA_DIGITS) -> str:
    """A probability as the book prints it: 7.4541e-05, 1.0000e+00, 0.0000e+00."""
    special = _special(p)
    return special if special is not None else f"{float(p):.{digits}e}"


def nats(x, digits: int = 4) -> str:
    """A loss or a log probability in nats: 10.7940, −∞."""
    special = _special(x)
    return special if special is not None else f"{float(x):.{digits}f}"


def distinct(values, fmt=proba, digits: int = PROBA_DIGITS) -> list[str]:
    """`values` printed with `fmt`, with as many more digits as it takes for different values to
    print differently (two gradients 1.156e-05 and 1.034e-05 must never both read 0.00001)."""
    values = list(values)
    for d in range(digits, MAX_DIGITS + 1):
        out = [fmt(v, d) for v in values]
        seen: dict[str, object] = {}
        if all(seen.setdefault(s, v) == v for s, v in zip(out, values, strict=True)):
            return out
    return out


# Plotly axis settings for probabilities: e-notation ticks ("1e-05"), never SI prefixes ("10μ").
LOG_PROBA_AXIS = dict(type="log", dtick=1, exponentformat="e", showexponent="all", tickformat=".0e")
LINEAR_PROBA_AXIS = dict(exponentformat="e", showexponent="all", tickformat=".1e")


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


def to_float(x) -> float:
    if x is None:
        return float("nan")
    return float(x)


def label(summary_: dict, row: int, pos: int) -> str:
    """'Text 1 · every → ␣effort' (plain text: shown by widgets that do not parse HTML)."""
    p = summary_["texts"][row]["positions"][pos]
    return f"Text {row + 1} · position {pos} · {p['input']} → {p['target']}"


# --- user text ------------------------------------------------------------------------------


def esc(text: str) -> str:
    return html.escape(str(text), quote=True)


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|$<>~:&])")


def md(text: str) -> str:
    """User text (a file name, an error quoting the input) inside st.markdown / st.error:
    backslash-escaped so it shows literally, never as Markdown, LaTeX or HTML."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))
