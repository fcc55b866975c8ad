"""Lesson view: what the loss asks the model to change (the gradient on the logits), then real
training steps on a private copy of the model."""

from __future__ import annotations

import math
import threading

import plotly.graph_objects as go
import streamlit as st

from core.lessons.gradient import BOOK_LR, BOOK_WEIGHT_DECAY, MAX_STEPS, train_steps
from ui import cache, charts, errors, formats, lesson_data, lesson_nav, state, style, widgets


@st.cache_resource
def _one_at_a_time() -> threading.Lock:
    """A step copies the model (with AdamW, ~4x its size): one at a time per server."""
    return threading.Lock()


def symlog_floor(values: list[float]) -> float:
    """A decade below the smallest non-zero magnitude: every non-zero bar is at least one decade long."""
    small = min((abs(v) for v in values if v), default=1.0)
    return 10 ** (math.floor(math.log10(small)) - 1)


def symlog(v: float, floor: float) -> float:
    """sign(v) · log10(|v| / floor): 0 stays 0, and a 1e-05 push shows beside a 0.2 one."""
    return 0.0 if abs(v) <= floor else math.copysign(math.log10(abs(v) / floor), v)


def symlog_ticks(values: list[float], floor: float) -> list[tuple[float, str]]:
    top = max((abs(v) for v in values), default=floor * 10)
    decades = range(round(math.log10(floor)) + 1, math.ceil(math.log10(top)) + 1)
    ticks = [(0.0, "0")]
    for d in decades:
        x = d - round(math.log10(floor))
        ticks += [(x, f"1e{d:+03d}"), (-x, f"-1e{d:+03d}")]
    return sorted(ticks)


def figure(p: dict) -> go.Figure:
    labels = [f"{formats.esc(piece)}  ·{i}" for piece, i in zip(p["pieces"], p["ids"], strict=True)]
    push = [-g for g in p["gradients"]]
    colours = [style.ACCENT if i == p["target_id"] else style.NEUTRAL for i in p["ids"]]
    hover = [
        f"p = {formats.proba(q)}<br>∂loss/∂logit = {g:+.4e}"
        for q, g in zip(p["probas"], p["gradients"], strict=True)
    ]
    # The whole push down, over every token but the target: as large as the push up.
    labels.append("all other tokens, summed")
    push.append(-p["push_down_elsewhere"])
    colours.append("#999999")
    hover.append("Σ p / N over every token but the target")
    # A symmetric log scale: the top-10 pushes (about 1e-05) beside the target's (about 0.2) would
    # be invisible on a linear axis. Each bar's length is its decades above a floor.
    floor = symlog_floor(push)
    fig = go.Figure(
        go.Bar(
            x=[symlog(x, floor) for x in push],
            y=labels,
            orientation="h",
            marker_color=colours,
            customdata=hover,
            hovertemplate="%{y}<br>%{customdata}<extra></extra>",
            text=formats.distinct(push, fmt=lambda v, d: f"{v:+.{d}e}"),
            textposition="outside",
            cliponaxis=False,
        )
    )
    fig.update_yaxes(autorange="reversed", type="category")
    ticks = symlog_ticks(push, floor)
    xs = [symlog(x, floor) for x in push]
    lo, hi = min(xs + [0.0]), max(xs + [0.0])
    pad = 0.35 * (hi - lo)  # room for the values written beside the bars
    fig.update_xaxes(
        title="−∂loss/∂logit (symmetric log scale): how a step moves each logit (up > 0, down < 0)",
        range=[lo - pad, hi + pad],
        tickvals=[t for t, _ in ticks],
        ticktext=[label for _, label in ticks],
    )
    fig.update_layout(
        height=max(260, 34 * len(labels) + 80),
        title=f"After “{formats.esc(p['input'])}”: the target “{formats.esc(p['target'])}” up, the rest down",
    )
    return fig


def _steps(inputs: state.Inputs) -> None:
    st.subheader("One real training step", anchor=False)
    st.caption(
        f"AdamW with the book's settings (lr {BOOK_LR}, weight decay {BOOK_WEIGHT_DECAY}) "
        "on your batch, applied "
        "to a private copy of the model: the shared model, and every other view, stay as they are. "
        "Dropout is off so a step is reproducible. More steps show the model memorising the batch."
    )
    n = st.number_input("Steps", 1, MAX_STEPS, 1, step=1, key="grad_steps", bind="query-params")
    key, seed, device = lesson_data.model_args(inputs)
    run_key = (key, seed, device, inputs.texts, int(n))
    done = st.session_state.setdefault("_grad_runs", {})
    if run_key not in done:
        if not st.button(
            f"Run {int(n)} training step{'s' if n > 1 else ''}",
            type="primary",
            icon=":material/model_training:",
            key="grad_run",
        ):
            return
        bar = st.progress(0.0, text="Copying the model…")
        with _one_at_a_time():
            r = train_steps(
                cache.get_model(key, seed, device),
                list(inputs.texts),
                int(n),
                tokenizer=cache.tokenizer(),
                progress=lambda k, total: bar.progress(k / total, text=f"step {k} of {total}"),
            )
        bar.empty()
        done.clear()  # one result per session: they are small, but a session need not hoard them
        done[run_key] = r.to_dict()
    r = done[run_key]
    if r["optimizer"] == "sgd":
        st.info(
            "Free memory is short here, so this ran plain SGD (no optimizer state) instead of AdamW.",
            icon=":material/memory:",
        )
    c1, c2, c3 = st.columns(3)
    c1.metric("Loss before", formats.num(r["losses"][0]))
    c2.metric(
        f"Loss after {len(r['losses']) - 1} step(s)",
        formats.num(r["losses"][-1]),
        delta=f"{r['losses'][-1] - r['losses'][0]:+.4f}",
        delta_color="inverse",
    )
    c3.metric(
        "Optimizer",
        "AdamW" if r["optimizer"] == "adamw" else "SGD",
        help=f"lr {r['lr']}, weight decay {r['weight_decay']}",
    )
    fig = go.Figure(
        go.Scatter(
            x=list(range(len(r["losses"]))),
            y=r["losses"],
            mode="lines+markers",
            line=dict(color=style.ACCENT),
        )
    )
    fig.update_xaxes(title="optimizer steps", dtick=1)
    fig.update_yaxes(title="loss on the batch (nats)")
    fig.update_layout(height=300, title="Loss on the same batch after each step")
    charts.chart(fig, "training-steps", inputs.presentation)
    s = lesson_data.gradients(key, seed, device, inputs.texts, 1)["positions"]
    # One format for every probability of the table, with the digits that keep different ones apart.
    values = [v for probas in r["target_probas"] for v in probas]
    shown = dict(zip(values, formats.distinct(values), strict=True))
    rows = [
        {
            "text": q["text"],
            "position": q["position"],
            "target": q["target"],
            **{
                f"p after {k} step{'s' if k != 1 else ''}" if k else "p before": shown[probas[m]]
                for k, probas in enumerate(r["target_probas"])
            },
        }
        for m, q in enumerate(s)
    ]
    st.dataframe(rows, hide_index=True)
    widgets.downloads("training-steps", rows, r, key="grad-steps")


def render(inputs: state.Inputs) -> None:
    lesson_nav.open_view("gradient", inputs)
    st.caption(
        "What the loss asks the model to change. The gradient of the mean cross entropy "
        "with respect to one prediction's logits is "
        "(softmax − one_hot(target)) / N for N predictions: "
        "training raises the target's logit by (1 − p) / N "
        "and lowers every other token's in proportion to its probability. The two amounts are equal."
    )
    with errors.friendly_errors():
        g = lesson_data.gradients(*lesson_data.model_args(inputs), inputs.texts, inputs.top_k)
        n = g["num_predictions"]
        at = (
            st.select_slider("Prediction", list(range(1, n + 1)), key="grad_at", bind="query-params")
            if n > 1
            else 1
        )
        p = g["positions"][at - 1]
        st.caption(formats.md(f"Text {p['text']} · position {p['position']} · {p['input']} → {p['target']}"))
        c1, c2, c3 = st.columns(3)
        target_p = p["probas"][p["ids"].index(p["target_id"])]
        c1.metric("Target probability", formats.proba(target_p))
        c2.metric("Target pushed up by", f"{p['push_up']:.4e}", help="(1 − p_target) / N")
        c3.metric(
            "Others pushed down by, in all",
            f"{p['push_down_elsewhere']:.4e}",
            help=f"Σ p / N over the other 50,256 tokens; the {len(p['ids']) - 1} shown account for "
            f"{-p['shown_push_down']:.4e}",
        )
        charts.chart(figure(p), f"gradient-pos{at}", inputs.presentation)
        rows = [
            {"token": piece, "id": i, "proba": q, "gradient": gr}
            for piece, i, q, gr in zip(p["pieces"], p["ids"], p["probas"], p["gradients"], strict=True)
        ]
        widgets.downloads(
            "gradient",
            rows,
            {
                k: p[k]
                for k in (
                    "text",
                    "position",
                    "input",
                    "target",
                    "target_id",
                    "num_predictions",
                    "push_up",
                    "push_down_elsewhere",
                )
            }
            | {"bars": rows},
        )
        _steps(inputs)


if __name__ == "__main__":  # run as a page of app.py's st.navigation
    render(state.current_inputs())
