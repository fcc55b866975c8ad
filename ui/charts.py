"""Plotly charts: the frame every chart of the app gets (toolbar, type sizes, a text
alternative), and figure 5.7's chart of one step."""

from __future__ import annotations

import math

import plotly.graph_objects as go
import streamlit as st

from core.lessons.report import STEPS
from ui import a11y, formats
from ui.formats import esc, num, to_float
from ui.style import ACCENT, ACCENT_TEXT, NEUTRAL, VIRIDIS


def plotly_config(filename: str) -> dict:
    """Plotly's toolbar saves the chart; SVG for slides, at twice the pixels for PNG."""
    return {
        "displaylogo": False,
        "toImageButtonOptions": {"format": "svg", "filename": f"losslens-{filename}", "scale": 2},
        "modeBarButtonsToRemove": ["lasso2d", "select2d"],
    }


def chart(fig, filename: str, presentation: bool = False, description: str = "") -> None:
    """A Plotly chart, then its text alternative: the lesson in a sentence, the values as a table."""
    fig.update_layout(
        margin=dict(l=10, r=10, t=40, b=10),
        font=dict(size=20 if presentation else 14),
        hoverlabel=dict(font_size=16 if presentation else 13),
    )
    st.plotly_chart(fig, config=plotly_config(filename), width="stretch")
    a11y.chart_alternative(fig, description)


# --- figure 5.7, one step ------------------------------------------------------------------


def _positions(s: dict) -> list[tuple[str, dict]]:
    return [
        # Input and target on lines of their own: side by side, neighbouring labels ran together.
        (f"{esc(p['input'])} →<br>{esc(p['target'])}<br>{r + 1}·{p['position']}", p)
        for r, t in enumerate(s["texts"])
        for p in t["positions"]
    ]


def _uniform(fig: go.Figure, x: list[str], uniform: float) -> None:
    # A trace, not add_hline: its label stays right on a log axis too.
    fig.add_scatter(
        x=x,
        y=[uniform] * len(x),
        mode="lines",
        name=f"uniform 1/{round(1 / uniform):,}",
        line=dict(color="#666666", dash="dot"),
        hoverinfo="skip",
    )


def step_figure(s: dict, step: int) -> go.Figure:
    pos = _positions(s)
    x = [name for name, _ in pos]
    ps = [p for _, p in pos]
    uniform = 1 / s["vocab_size"]
    fig = go.Figure()
    if step == 1:
        fig.add_bar(x=x, y=[p["top_k"][0]["logit"] for p in ps], name="highest logit", marker_color=NEUTRAL)
        fig.add_bar(x=x, y=[p["target_logit"] for p in ps], name="target's logit", marker_color=ACCENT)
        fig.update_yaxes(title="logit (unnormalized score)")
    elif step == 2:
        fig.add_bar(
            x=x,
            y=[p["top_k"][0]["proba"] for p in ps],
            name="highest probability",
            marker_color=NEUTRAL,
        )
        fig.add_bar(
            x=x,
            y=[to_float(p["target_proba"]) for p in ps],
            name="target's probability",
            marker_color=ACCENT,
        )
        _uniform(fig, x, uniform)
        fig.update_yaxes(title="probability", **formats.LINEAR_PROBA_AXIS)
    elif step == 3:
        fig.add_bar(
            x=x,
            y=[to_float(p["target_proba"]) for p in ps],
            name="target_probas",
            marker_color=ACCENT,
            text=formats.distinct([to_float(p["target_proba"]) for p in ps]),
            textposition="auto",
        )
        _uniform(fig, x, uniform)
        values = [v for v in (to_float(p["target_proba"]) for p in ps) if v > 0] + [uniform]
        lo, hi = math.log10(min(values)), math.log10(max(values))
        fig.update_yaxes(
            title="target probability (log scale)",
            **formats.LOG_PROBA_AXIS,
            range=[math.floor(lo - 0.3), math.ceil(hi + 0.3)],
        )
    else:
        _log_bars(fig, s, x, step)
    fig.update_xaxes(tickangle=0, title="input → target (text·position)")
    # The legend above the plot: below it, it ran into the x-axis title.
    fig.update_layout(
        barmode="group",
        height=420,
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0),
        title=dict(text=STEPS[step - 1][1], y=0.98, yanchor="top"),
        margin=dict(t=90),
    )
    return fig


def _log_bars(fig: go.Figure, s: dict, x: list[str], step: int) -> None:
    """Steps 4-6. A log probability of −∞ (a probability rounded to 0) is no bar of height 0:
    it is drawn as a hatched bar past the largest finite one, labelled −∞ (∞ once negated)."""
    sign = -1 if step == 6 else 1
    logs = [sign * to_float(v) for v in s["log_probas"]]
    finite = [abs(v) for v in logs if math.isfinite(v)]
    cap = 1.25 * max(finite, default=1.0)
    inf = [not math.isfinite(v) for v in logs]
    fig.add_bar(
        x=x,
        y=[math.copysign(cap, v) if i else v for v, i in zip(logs, inf, strict=True)],
        text=[num(v, 2) for v in logs],
        textposition="inside",
        insidetextanchor="middle",
        name="-log_probas" if step == 6 else "log_probas",
        marker_color=VIRIDIS[3] if step == 4 else "rgba(49,104,142,.45)",
        marker_pattern_shape=["/" if i else "" for i in inf],
    )
    if step >= 5:
        level = to_float(s["neg_avg_log_probas"] if step == 6 else s["avg_log_probas"])
        name = "loss by hand (naive)" if step == 6 else "mean"
        if math.isfinite(level):
            fig.add_hline(
                y=level,
                line_color=ACCENT,
                line_width=4,
                annotation_text=f"{name} = {num(level)}",
                annotation_position="top left",
                annotation_font_color=ACCENT_TEXT,
            )
        else:  # no line at infinity (Plotly would draw it slanted near 0): say it in words
            fig.add_annotation(
                text=f"{name} = {formats.nats(level)}: a probability rounded to 0 has log −∞",
                xref="paper",
                yref="paper",
                x=0.01,
                y=0.97,
                xanchor="left",
                yanchor="top",
                showarrow=False,
                font=dict(color=ACCENT_TEXT),
            )
        if step == 6 and isinstance(s["loss"], float) and math.isfinite(s["loss"]) and any(inf):
            fig.add_hline(
                y=s["loss"],
                line_color=NEUTRAL,
                line_width=3,
                line_dash="dash",
                annotation_text=f"F.cross_entropy (stable) = {num(s['loss'])}",
                annotation_position="bottom right",
            )
    fig.update_yaxes(title="−log probability (nats)" if step == 6 else "log probability (nats)")
