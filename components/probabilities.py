"""View 2: per position, the top-k of the full-vocabulary softmax, the target highlighted."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from ui import a11y, cache, charts, errors, formats, lesson_nav, state, style, widgets


def _plot_label(piece: str, token_id: int) -> str:
    # Plotly reads a few HTML tags in labels: a token like "<br>" must stay literal.
    return f"{formats.esc(piece)}  ·{token_id}"


def figure(p: dict, temperature: float) -> go.Figure:
    top = p["top_k"]
    in_top = any(c["id"] == p["target_id"] for c in top)
    labels = [_plot_label(c["piece"], c["id"]) for c in top]
    values = [c["proba"] for c in top]
    colors = [style.ACCENT if c["id"] == p["target_id"] else style.NEUTRAL for c in top]
    hover = [f"id {c['id']}<br>p = {formats.proba(c['proba'])}<br>logit = {c['logit']:.4f}" for c in top]
    if not in_top:
        labels.append(f"target (rank {p['rank']:,}): {_plot_label(p['target'], p['target_id'])}")
        values.append(formats.to_float(p["target_proba"]))
        colors.append(style.ACCENT)
        proba = formats.proba(p["target_proba"])
        hover.append(f"id {p['target_id']}<br>p = {proba}<br>logit = {p['target_logit']:.4f}")
    fig = go.Figure(
        go.Bar(
            x=values,
            y=labels,
            orientation="h",
            marker_color=colors,
            customdata=hover,
            hovertemplate="%{y}<br>%{customdata}<extra></extra>",
            text=formats.distinct(values),
            textposition="auto",
        )
    )
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(
        title="probability (softmax over all 50,257 tokens"
        + (f", temperature {temperature:g})" if temperature != 1 else ")"),
        **formats.LINEAR_PROBA_AXIS,  # 2.0e-05, never "20μ"
    )
    fig.update_layout(
        height=max(260, 34 * len(labels) + 80),
        title=f"After “{formats.esc(p['input'])}”: top {len(top)} next tokens",
    )
    return fig


def render(inputs: state.Inputs) -> None:
    lesson_nav.open_view("probabilities", inputs)
    with errors.friendly_errors():
        s = cache.summary(inputs)
        if not inputs.presentation:  # on a projector the target's own numbers are the view
            widgets.metrics(s)
        options = [(r, i) for r, t in enumerate(s["texts"]) for i in range(len(t["positions"]))]
        r, i = st.selectbox(
            "Position",
            options,
            format_func=lambda o: formats.label(s, *o),
            key="position",
            help="Which prediction to show: the context read so far and the token that actually follows.",
        )
        p = s["texts"][r]["positions"][i]
        c1, c2, c3 = st.columns(3)
        c1.metric(
            "Target token", formats.md(p["target"]), help=f"token id {p['target_id']}"
        )  # metric values are Markdown
        c2.metric("Target probability", formats.proba(p["target_proba"]))
        c3.metric("Target rank", f"{p['rank']:,} of {s['vocab_size']:,}", help="1 = the model's favourite")
        st.caption("Context the model has read:")
        style.html_block("".join(style.chip(c, None) for c in s["texts"][r]["tokens"][: i + 1]))
        charts.chart(
            figure(p, s["temperature"]),
            f"top{s['top_k']}-text{r + 1}-pos{i}",
            inputs.presentation,
            a11y.describe_prediction(p, s["vocab_size"]),
        )
        st.caption(
            f"Bars: the {s['top_k']} most likely next tokens (change top-k in the sidebar); the "
            "actual next token in orange, shown below the others with its rank when it is not among them. "
            f"An untrained model spreads its probability almost evenly: 1/{s['vocab_size']:,} ≈ "
            f"{formats.proba(1 / s['vocab_size'])}."
        )
        rows = [
            {
                "text": rr + 1,
                "position": q["position"],
                "input": q["input"],
                "target": q["target"],
                "target_id": q["target_id"],
                "target_proba": q["target_proba"],
                "rank": q["rank"],
                "top1": q["top_k"][0]["piece"],
                "top1_proba": q["top_k"][0]["proba"],
            }
            for rr, t in enumerate(s["texts"])
            for q in t["positions"]
        ]
        st.subheader("All positions", anchor=False)
        st.dataframe(
            rows,
            hide_index=True,
            column_config={
                "target_proba": st.column_config.NumberColumn("target proba", format="%.4e"),
                "top1_proba": st.column_config.NumberColumn("top-1 proba", format="%.4e"),
            },
        )
        payload = [
            {
                "text": rr + 1,
                **{
                    k: q[k]
                    for k in ("position", "input", "target", "target_id", "target_proba", "rank", "top_k")
                },
            }
            for rr, t in enumerate(s["texts"])
            for q in t["positions"]
        ]
        widgets.downloads("probabilities", rows, payload)
        lesson_nav.try_this("probabilities")
    lesson_nav.footer("probabilities")


if __name__ == "__main__":  # run as a page of app.py's st.navigation
    render(state.current_inputs())
