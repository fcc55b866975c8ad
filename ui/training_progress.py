"""What a training run shows, live and when it ends: its progress, the loss metrics, the loss
curves and the greedy samples after each epoch."""

from __future__ import annotations

import re

import plotly.graph_objects as go
import streamlit as st

from core.models.training import START_CONTEXT
from ui import a11y, charts, style


def figure(evals: list[dict], title: str = "Training and validation loss") -> go.Figure:
    fig = go.Figure()
    x = [e["tokens_seen"] for e in evals]
    steps = [e["step"] for e in evals]
    for name, key, colour, dash in (
        ("training", "train_loss", style.NEUTRAL, "solid"),
        ("validation", "val_loss", style.ACCENT, "dashdot"),
    ):
        fig.add_scatter(
            x=x,
            y=[e[key] for e in evals],
            customdata=steps,
            mode="lines+markers",
            name=f"{name} loss",
            line=dict(color=colour, dash=dash),
            hovertemplate="step %{customdata}<br>%{x:,} tokens seen<br>loss %{y:.3f}<extra></extra>",
        )
    fig.update_xaxes(title="tokens seen")
    fig.update_yaxes(title="cross entropy (nats)")
    fig.update_layout(height=400, title=title, legend=dict(orientation="h", yanchor="top", y=-0.2))
    return fig


def sample_line(sample: str, start: str = START_CONTEXT) -> tuple[str, bool]:
    """A greedy sample as the page prints it, and whether its continuation has no word yet.
    Spaces after the prompt are made visible (runs counted), since the book's samples fold line
    breaks into spaces and an early model's continuation is often nothing else."""
    rest = sample[len(start) :] if sample.startswith(start) else sample
    shown = re.sub(r" {4,}", lambda m: f" ␣×{len(m.group())} ", rest)
    return f"{start}{shown}".rstrip(), not any(ch.isalnum() for ch in rest)


def show_samples(samples: list) -> None:
    if not samples:
        return
    st.markdown("**Greedy samples from “Every effort moves you”, after each epoch**")
    wordless = []
    for epoch, text in samples:
        line, empty = sample_line(text)
        st.text(f"Epoch {epoch}: {line}")  # st.text: shown literally, never as Markdown
        if empty:
            wordless.append(str(epoch))
    if wordless:
        st.caption(
            f"Epoch {', '.join(wordless)}: no word after the prompt yet, only spaces or punctuation (␣×N: "
            "N spaces; line breaks print as spaces, as in the book). A barely trained model predicts "
            "the corpus's most frequent tokens whatever came before; words follow as the loss falls."
        )


def show(snap: dict, presentation: bool) -> None:
    total = snap["total_steps"] or 0
    done = snap["step"]
    evals = snap["evals"]
    if total:
        status = "stopping…" if snap["stopping"] and snap["running"] else f"step {done} of {total}"
        st.progress(
            min(done / total, 1.0),
            text=f"{snap['name']} ({snap['preset']} preset): {status}, {snap['elapsed_s']:.0f} s",
        )
    if evals:
        last = evals[-1]
        c1, c2, c3, c4 = st.columns(4)
        first = evals[0] if len(evals) > 1 else None  # the change since the first evaluation
        c1.metric(
            "Training loss",
            f"{last['train_loss']:.3f}",
            delta_color="inverse",
            delta=f"{last['train_loss'] - first['train_loss']:+.3f}" if first else None,
        )
        c2.metric(
            "Validation loss",
            f"{last['val_loss']:.3f}",
            delta_color="inverse",
            delta=f"{last['val_loss'] - first['val_loss']:+.3f}" if first else None,
        )
        c3.metric(
            "Gap (val − train)",
            f"{last['val_loss'] - last['train_loss']:.3f}",
            help="Grows when the model memorises the training text: overfitting.",
        )
        c4.metric("Tokens seen", f"{last['tokens_seen']:,}")
        if snap.get("fast"):
            gap = snap.get("bf16_gap")
            st.info(
                "Fast mode: each training step ran in bfloat16; the losses here are float32. "
                + (
                    f"At the last evaluation, bfloat16 on the same batches gave {gap[0]:+.4f} "
                    f"(training) and {gap[1]:+.4f} (validation)."
                    if gap
                    else "The first evaluation will say how far bfloat16 is on the same batches."
                ),
                icon=":material/speed:",
            )
        charts.chart(figure(evals), "training-loss", presentation, a11y.describe_training(evals))
    show_samples(snap["samples"])
