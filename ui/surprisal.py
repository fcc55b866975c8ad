"""The chapter's intuition as one curve: surprisal −ln p against the target's probability p, the
batch's targets as dots on it, and the uniform guess 1/V marked."""

from __future__ import annotations

import math

import plotly.graph_objects as go
import streamlit as st

from ui import charts, formats, style


def targets(s: dict) -> list[tuple[str, float, float]]:
    """(label, p, −ln p) of every target with p > 0 (a probability rounded to 0 has no dot)."""
    out = []
    for r, t in enumerate(s["texts"]):
        for p in t["positions"]:
            prob = formats.to_float(p["target_proba"])
            if prob > 0:
                out.append((f"{p['input']} → {p['target']} ({r + 1}·{p['position']})", prob, -math.log(prob)))
    return out


def figure(s: dict) -> go.Figure:
    v = s["vocab_size"]
    uniform = 1 / v
    dots = targets(s)
    lo = min([uniform / 10] + [p / 3 for _, p, _ in dots])
    exps = [math.log10(lo) * (1 - k / 60) for k in range(61)]  # lo .. 1, evenly on the log axis
    xs = [10**e for e in exps]
    fig = go.Figure()
    fig.add_scatter(
        x=xs,
        y=[-math.log(x) for x in xs],
        mode="lines",
        name="−ln p (surprisal)",
        line=dict(color=style.NEUTRAL, width=3),
        hoverinfo="skip",
    )
    fig.add_scatter(
        x=[p for _, p, _ in dots],
        y=[y for _, _, y in dots],
        mode="markers",
        name="this batch's targets",
        marker=dict(color=style.ACCENT, size=13, line=dict(color="#111111", width=1)),
        customdata=[[name, formats.proba(p), formats.nats(y)] for name, p, y in dots],
        hovertemplate="%{customdata[0]}<br>p = %{customdata[1]}<br>−ln p = %{customdata[2]}<extra></extra>",
    )
    fig.add_scatter(
        x=[uniform],
        y=[math.log(v)],
        mode="markers",
        name=f"uniform guess 1/{v:,}: −ln p = {math.log(v):.2f}",
        marker=dict(symbol="diamond", size=15, color="#111111"),
        hoverinfo="skip",
    )
    fig.add_hline(y=math.log(v), line_dash="dot", line_color="#666666")
    if isinstance(s["loss"], float) and math.isfinite(s["loss"]):
        fig.add_hline(
            y=s["loss"],
            line_color=style.ACCENT,
            line_width=2,
            annotation_text=f"loss = mean = {s['loss']:.4f}",
            annotation_position="top right",
            annotation_font_color=style.ACCENT_TEXT,
        )
    fig.update_xaxes(
        title="target's probability p (log scale)",
        **formats.LOG_PROBA_AXIS,
        minor=dict(showgrid=False, ticks=""),
    )
    fig.update_yaxes(title="surprisal −ln p (nats)", rangemode="tozero")
    fig.update_layout(
        height=380,
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0, title_text=""),
        margin=dict(t=60),
    )
    return fig


def intuition(s: dict) -> str:
    """Why an untrained model sits near ln V, what above the line means, and where this batch is."""
    v = s["vocab_size"]
    ln_v = math.log(v)
    base = (
        f"A uniform guess gives every target p = 1/{v:,}, so −ln p = ln({v:,}) = {ln_v:.2f}. "
        "An untrained model sits near that line: its logits are nearly equal, so its softmax is "
        "nearly uniform. A dot **above** the line is a target the model found *less* likely than a "
        "blind guess: it was confidently wrong, putting its probability on other tokens."
    )
    loss = s["loss"]
    if not isinstance(loss, float) or not math.isfinite(loss):
        return base
    if loss > ln_v:
        where = (
            f" This batch's loss, {loss:.4f}, is **above ln({v:,}) = {ln_v:.2f}**: on average the model "
            "did worse than a uniform guess; it is confidently wrong."
        )
    else:
        where = f" This batch's loss, {loss:.4f}, is below ln({v:,}) = {ln_v:.2f}: better than a blind guess."
    return base + where


def section(s: dict, presentation: bool, filename: str) -> None:
    st.markdown(intuition(s))
    st.markdown("**Loss is the mean surprisal: −ln p of each target**")
    description = (
        f"Surprisal −ln p falls from left to right as the target's probability rises to 1. "
        f"{len(targets(s))} targets are drawn on the curve; the uniform guess is at "
        f"{math.log(s['vocab_size']):.2f} nats."
    )
    charts.chart(figure(s), filename, presentation, description)
