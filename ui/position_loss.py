"""Dataset view section: the mean loss at each position of the window, per split."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from core.lessons.positions import position_losses
from ui import cache, charts, formats, store, style, widgets

SHOW = ["Both splits", "Training", "Validation"]


def figure(r: dict, show: str) -> go.Figure:
    fig = go.Figure()
    for name, key, colour in (("training", "train", style.NEUTRAL), ("validation", "val", style.ACCENT)):
        if show not in (SHOW[0], name.capitalize()):
            continue
        means = r[key]["position_means"]
        fig.add_scatter(
            x=list(range(len(means))),
            y=means,
            mode="lines",
            name=f"{name}: mean loss at the position",
            line=dict(color=colour),
        )
        fig.add_hline(y=r[key]["loss"], line_dash="dot", line_color=colour)
    fig.update_xaxes(title="position in the window (tokens of context − 1)")
    fig.update_yaxes(title="mean cross entropy (nats)")
    fig.update_layout(
        height=380,
        title="Loss by position in the window",
        legend=dict(orientation="h", yanchor="top", y=-0.2),
    )
    return fig


def section(model, text: str, settings, num_batches, key: tuple, presentation: bool) -> None:
    st.subheader("Loss by position in the window", anchor=False)
    st.caption(
        "Position 0 predicts its token from one token of context, the last position from the whole window. "
        "A trained model pays most at the start of every window; an untrained one is flat. The means, "
        "weighted by their counts, give the split's loss back (dotted lines)."
    )
    key = (*key, "positions")  # beside the Dataset view's result in the one store (forgotten with it)
    if store.get(key) is None:
        slot = st.empty()
        if not slot.button("Compute loss by position", icon=":material/calculate:", key="pos_compute"):
            return
        slot.empty()
        bar = st.progress(0.0, text="Starting…")
        stop = st.empty()
        stop.button("Stop", icon=":material/stop:", key="pos_stop")  # a click reruns the page: the loop ends
        split_name = {"train": "training", "val": "validation"}
        r = position_losses(
            model,
            text,
            settings,
            num_batches,
            tokenizer=cache.tokenizer(),
            progress=lambda done, total, split: bar.progress(
                done / max(total, 1), text=f"{split_name[split]} batches: {done} of {total}"
            ),
        )
        bar.empty()
        stop.empty()
        if r["cancelled"]:
            return
        store.put(key, r)
    r = store.get(key)
    show = st.radio("Show", SHOW, horizontal=True, key="pos_split", bind="query-params")
    c1, c2, c3, c4 = st.columns(4)
    for col, split, name in ((c1, "train", "Training"), (c3, "val", "Validation")):
        p = r[split]
        col.metric(
            f"{name} loss (book)", formats.num(p["loss"]), help="calc_loss_loader: the mean of batch losses"
        )
        (c2 if split == "train" else c4).metric(
            f"{name}, by position",
            formats.num(p["token_weighted_loss"]),
            help="The mean loss at each position, weighted by how many windows reach it: every "
            "token once, so it equals the book's loss when all batches are full.",
        )
    charts.chart(figure(r, show), "loss-by-position", presentation)
    rows = [
        {
            "position": i,
            **{f"{s}_mean_loss": r[s]["position_means"][i] for s in ("train", "val")},
            **{f"{s}_windows": r[s]["counts"][i] for s in ("train", "val")},
        }
        for i in range(len(r["train"]["position_means"]))
    ]
    widgets.downloads("loss-by-position", rows, r, key="positions")
