"""Lesson view: per prediction, how unsure the model was (entropy) against how surprised it was."""

from __future__ import annotations

import math

import plotly.graph_objects as go
import streamlit as st

from ui import charts, errors, formats, lesson_data, lesson_nav, state, style, widgets

# Okabe-Ito, colour-blind safe, in GLTR's order: green (top 10) ... purple (beyond 1000).
BUCKET_COLOURS = ["#009e73", "#f0e442", "#e69f00", "#cc79a7"]


def scatter(rows: list[dict]) -> go.Figure:
    fig = go.Figure()
    hi = max([r["entropy"] for r in rows] + [r["surprisal"] for r in rows] + [1.0])
    fig.add_scatter(
        x=[0, hi],
        y=[0, hi],
        mode="lines",
        name="surprisal = entropy (as expected)",
        line=dict(color="#999999", dash="dot"),
        hoverinfo="skip",
    )
    names = sorted({(r["bucket_index"], r["bucket"]) for r in rows})
    for index, name in names:
        pts = [r for r in rows if r["bucket_index"] == index]
        fig.add_scatter(
            x=[r["entropy"] for r in pts],
            y=[r["surprisal"] for r in pts],
            mode="markers",
            name=f"target rank {name}",
            marker=dict(color=BUCKET_COLOURS[index], size=10, line=dict(width=1, color="#333")),
            customdata=[
                [formats.esc(r["input"]), formats.esc(r["target"]), r["rank"], r["text"], r["position"]]
                for r in pts
            ],
            hovertemplate="text %{customdata[3]}, position %{customdata[4]}: "
            "%{customdata[0]} → %{customdata[1]}"
            "<br>entropy %{x:.3f} nats<br>surprisal %{y:.3f} nats<br>rank %{customdata[2]:,}<extra></extra>",
        )
    fig.update_xaxes(title="entropy of the prediction (nats): how unsure the model was")
    fig.update_yaxes(title="surprisal of the target (nats): what it paid")
    fig.update_layout(
        height=460,
        title="Confidence against surprise, one point per prediction",
        legend=dict(orientation="h", yanchor="top", y=-0.2),
    )
    return fig


def histogram(c: dict) -> go.Figure:
    fig = go.Figure(
        go.Bar(
            x=c["bucket_names"],
            y=c["histogram"],
            marker_color=BUCKET_COLOURS,
            text=c["histogram"],
            textposition="outside",
        )
    )
    fig.update_yaxes(title="predictions")
    fig.update_layout(height=320, title="Targets by rank bucket (GLTR)")
    return fig


def coloured(c: dict) -> str:
    out, row = [], 0
    for r in c["rows"]:
        if r["text"] != row:
            row = r["text"]
            out.append(
                ("<br>" if out else "")
                + f'<span style="border:1px dashed #999">{formats.esc(c["first_tokens"][row - 1])}</span>'
            )
        tip = (
            f"rank {r['rank']:,} ({r['bucket']}); surprisal {r['surprisal']:.3f} nats; "
            f"entropy {r['entropy']:.3f} nats"
        )
        out.append(
            f'<span style="background:{BUCKET_COLOURS[r["bucket_index"]]};color:#000" '
            f'title="{formats.esc(tip)}">{formats.esc(r["target"])}</span>'
        )
    return '<div class="ll-heat">' + "".join(out) + "</div>"


SAME_ENTROPY = 0.05  # nats: points closer than this stand on one vertical line of the chart


def one_entropy_note(rows: list[dict]) -> str | None:
    """Why every point can share one x value: an untrained model's nearly uniform softmax."""
    entropies = [r["entropy"] for r in rows]
    lo, hi = min(entropies), max(entropies)
    if hi - lo >= SAME_ENTROPY:
        return None
    return (
        f"All {len(rows)} points share one entropy, {lo:.4f} to {hi:.4f} nats, next to "
        f"ln 50,257 = {math.log(50257):.4f}: this model's softmax is nearly uniform at every position "
        "(an untrained model's logits are nearly equal), so it is equally unsure everywhere. Only the "
        "surprisal, how far each target's probability fell below the others', tells the points apart."
    )


def render(inputs: state.Inputs) -> None:
    lesson_nav.open_view("confidence", inputs)
    st.caption(
        "Entropy −Σ p log p says how spread out a prediction was; surprisal −log p(target) what the loss "
        "charged. The entropy is the surprisal the model expected: points high above the dotted line are "
        "confidently wrong, points near it on the right merely unsure."
    )
    with errors.friendly_errors():
        c = lesson_data.confidence_rows(*lesson_data.model_args(inputs), inputs.texts, inputs.temperature)
        rows = c["rows"]
        wrong = max(rows, key=lambda r: r["surprisal"] - r["entropy"])
        c1, c2, c3 = st.columns(3)
        c1.metric("Mean entropy", formats.num(sum(r["entropy"] for r in rows) / len(rows)), help="nats")
        c2.metric(
            "Mean surprisal = loss", formats.num(sum(r["surprisal"] for r in rows) / len(rows)), help="nats"
        )
        c3.metric(
            "Most confidently wrong",
            formats.md(wrong["target"]),
            help=f"surprisal − entropy = {wrong['surprisal'] - wrong['entropy']:.3f} nats "
            f"(text {wrong['text']}, position {wrong['position']})",
        )
        charts.chart(scatter(rows), "confidence-scatter", inputs.presentation)
        if note := one_entropy_note(rows):
            st.info(note, icon=":material/info:")
        if st.toggle("Colour the text by the target's rank (GLTR)", key="gltr", bind="query-params"):
            style.html_block(
                '<div class="ll-legend">'
                + "".join(
                    f'<span style="background:{col};color:#000;padding:0 6px;border-radius:4px">'
                    f"{formats.esc(n)}</span>"
                    for col, n in zip(BUCKET_COLOURS, c["bucket_names"], strict=True)
                )
                + "</div>"
            )
            style.html_block(coloured(c))
            charts.chart(histogram(c), "rank-buckets", inputs.presentation)
        table = [
            {
                k: r[k]
                for k in (
                    "text",
                    "position",
                    "input",
                    "target",
                    "target_id",
                    "entropy",
                    "surprisal",
                    "rank",
                    "bucket",
                    "top_proba",
                )
            }
            for r in rows
        ]
        with st.expander("All predictions"):
            st.dataframe(table, hide_index=True)
        widgets.downloads(
            "confidence",
            table,
            {"predictions": table, "histogram": dict(zip(c["bucket_names"], c["histogram"], strict=True))},
        )


if __name__ == "__main__":  # run as a page of app.py's st.navigation
    render(state.current_inputs())
