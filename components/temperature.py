"""Lesson view: loss, perplexity and mean entropy against temperature, from one forward pass."""

from __future__ import annotations

import math

import plotly.graph_objects as go
import streamlit as st

from ui import charts, errors, formats, lesson_data, lesson_nav, state, style, widgets

AXES = ["Loss (nats)", "Perplexity"]
# Labelled ticks on the log temperature axis: Plotly's own labels its minor ticks with bare digits.
T_TICKS = [0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20]


def loss_range(s: dict) -> list[float]:
    """The loss axis around the minimum: at low T an untrained model's loss runs into the
    hundreds, which would squash the minimum flat against the axis."""
    ln_v = math.log(s.get("vocab_size", 50257))
    best = s["best_loss"]
    top = best + 3 * max(1.0, abs(ln_v - best))
    return [max(0.0, best - 0.5), min(max(s["losses"]), top) + 0.2]


def figure(s: dict, axis: str) -> go.Figure:
    ppl = axis == AXES[1]
    y = [formats.to_float(p) for p in s["perplexities"]] if ppl else s["losses"]
    fig = go.Figure()
    fig.add_scatter(
        x=s["temperatures"],
        y=y,
        mode="lines+markers",
        name="perplexity" if ppl else "loss",
        line=dict(color=style.NEUTRAL),
        marker=dict(size=5),
    )
    fig.add_scatter(
        x=s["temperatures"],
        y=s["entropies"],
        mode="lines",
        name="mean entropy (nats)",
        yaxis="y2",
        line=dict(color=style.VIRIDIS[6], dash="dot"),
    )
    # Shapes written into the layout directly: add_vline is far slower (it resolves subplots).
    marks = (
        (s["current"], "current", style.ACCENT, "right"),
        (s["best"], "lowest loss", style.VIRIDIS[2], "left"),
    )
    fig.update_layout(
        shapes=[
            dict(type="line", xref="x", yref="paper", x0=t, x1=t, y0=0, y1=1, line=dict(color=c, dash="dash"))
            for t, _, c, _ in marks
        ],
        annotations=[
            dict(
                x=math.log10(t),
                xref="x",
                y=1.0,
                yref="paper",
                text=f"{name}: T = {t:.3g}",
                showarrow=False,
                xanchor=side,
                yanchor="bottom",
                font=dict(color=c),
            )
            for t, name, c, side in marks
        ],
    )
    fig.update_xaxes(
        type="log",
        title="temperature T (the logits are divided by T before the softmax)",
        tickvals=T_TICKS,
        ticktext=[f"{t:g}" for t in T_TICKS],
        minor=dict(ticks="", showgrid=False),
    )
    fig.update_layout(
        height=430,
        title="Cross entropy against temperature, on your texts",
        yaxis=dict(
            title="perplexity = exp(loss)" if ppl else "cross entropy (nats)",
            type="log" if ppl else "linear",
            range=None if ppl else loss_range(s),
            exponentformat="e",
        ),
        yaxis2=dict(
            title="mean entropy of the predictions (nats)",
            overlaying="y",
            side="right",
            showgrid=False,
            tickformat=".0f",
            dtick=2,
            tickmode="linear",
            tick0=0,
        ),
        legend=dict(orientation="h", yanchor="top", y=-0.2),
    )
    return fig


def sweep_words(s: dict) -> str:
    """What the curve shows, in the words of this sweep's own minimum."""
    ln_v = math.log(s.get("vocab_size", 50257))
    best, low = s["best"], s["best_loss"]
    if best > 1:
        shape = (
            f"The lowest loss, {low:.4f}, is at T = {best:.3g}, above 1: the model is over-confident, so "
            "flattening its predictions a little helps. Flattening all the way does not: at high T every "
            f"prediction becomes the uniform guess, ln 50,257 = {ln_v:.2f} nats."
        )
    else:
        shape = (
            f"The lowest loss, {low:.4f}, is at T = {best:.3g}, at or below 1: sharpening the predictions "
            "helps this model a little on these texts."
        )
    cut = max(s["losses"]) > loss_range(s)[1]
    return (
        shape + " A trained model's best temperature sits near 1, where it was trained; set the sidebar's "
        "temperature to move the orange line."
        + (
            " The loss axis stops above the minimum: at the lowest temperatures the loss climbs further "
            "(see All points)."
            if cut
            else ""
        )
    )


def render(inputs: state.Inputs) -> None:
    lesson_nav.open_view("temperature", inputs)
    st.caption(
        "The loss at every temperature from 0.05 to 20, from one forward pass: dividing the logits by T is "
        "all a temperature does. Low T makes the model over-confident (a wrong favourite costs a lot); high "
        "T flattens every prediction towards the uniform guess ln 50,257 ≈ 10.82 nats."
    )
    with errors.friendly_errors():
        s = lesson_data.sweep(*lesson_data.model_args(inputs), inputs.texts, inputs.temperature)
        c1, c2, c3, c4 = st.columns(4)
        c1.metric(
            "Loss at the current T", formats.num(s["current_loss"]), help=f"T = {s['current']:g} (sidebar)"
        )
        c2.metric(
            "Temperature with the lowest loss",
            f"{s['best']:.3f}",
            help="The best point of the grid, refined by a golden-section search.",
        )
        c3.metric("Lowest loss", formats.num(s["best_loss"]))
        i = s["temperatures"].index(s["current"])
        c4.metric(
            "Mean entropy at the current T",
            formats.num(s["entropies"][i]),
            help="−Σ p log p of each predicted distribution, averaged over the predictions (nats).",
        )
        axis = st.radio("Show", AXES, horizontal=True, key="sweep_axis", bind="query-params")
        charts.chart(figure(s, axis), "temperature-sweep", inputs.presentation)
        st.caption(sweep_words(s))
        rows = [
            {"temperature": t, "loss": loss, "perplexity": p, "mean_entropy": h}
            for t, loss, p, h in zip(
                s["temperatures"], s["losses"], s["perplexities"], s["entropies"], strict=True
            )
        ]
        with st.expander("All points"):
            st.dataframe(rows, hide_index=True)
        widgets.downloads("temperature-sweep", rows, s)


if __name__ == "__main__":  # run as a page of app.py's st.navigation
    render(state.current_inputs())
