"""View: pretrain a GPT on The Verdict with the book's train_model_simple (section 5.2), live.

The run is a core.background.TrainingRun: a child process at lower priority that trains its own
fresh model (never the shared one). A fragment polls it every second for the progress bar,
the loss curves and the samples. One run at a time per server (core.background.TrainingSlot).
"""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from components import a11y, common
from core.background import TrainingRun, TrainingSlot
from core.checkpoints import check_name, is_resumable
from core.presets import PRESETS, describe_estimate, estimate_time, get_preset, project, training_memory_gb
from core.runner import plan_run

POLL_S = 1.0


@st.cache_resource
def _slot() -> TrainingSlot:
    """The one training run this server allows at a time, shared by all sessions."""
    return TrainingSlot()


@st.cache_resource(show_spinner="Timing a few training steps on this server…", max_entries=4)
def _estimate(preset_name: str, device: str, fast: bool = False) -> dict:
    return estimate_time(get_preset(preset_name, fast=fast or None), common.verdict(), device=device)


def figure(evals: list[dict], title: str = "Training and validation loss") -> go.Figure:
    fig = go.Figure()
    x = [e["tokens_seen"] for e in evals]
    steps = [e["step"] for e in evals]
    for name, key, colour, dash in (
        ("training", "train_loss", common.NEUTRAL, "solid"),
        ("validation", "val_loss", common.ACCENT, "dashdot"),
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


def _samples(samples: list) -> None:
    if not samples:
        return
    st.markdown("**Greedy samples from “Every effort moves you”, after each epoch**")
    for epoch, text in samples:
        st.text(f"Epoch {epoch}: {text}")  # st.text: shown literally, never as Markdown


def _show(snap: dict, presentation: bool) -> None:
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
        common.chart(figure(evals), "training-loss", presentation, a11y.describe_training(evals))
    _samples(snap["samples"])


@st.fragment(run_every=POLL_S)
def _live(presentation: bool) -> None:
    run: TrainingRun | None = st.session_state.get("_train_run")
    if run is None:
        return
    snap = run.snapshot()
    if not snap["running"]:
        st.rerun(scope="app")  # finished or stopped: the full page shows the result and the picker updates
    if st.button("Stop", icon=":material/stop:", key="train_stop", disabled=snap["stopping"]):
        run.stop()
        snap = run.snapshot()
    _show(snap, presentation)


def _finished(run: TrainingRun, presentation: bool) -> None:
    snap = run.snapshot()
    if snap["error"]:
        st.error(common.md(snap["error"]), icon=":material/error:")
    elif snap["finished"]:
        st.success(
            f"Finished and saved. “Trained: {common.md(run.name)}” is now in the model picker, "
            "so every view can use it.",
            icon=":material/check_circle:",
        )
    elif snap["stopped"]:
        st.warning(
            f"Stopped after {snap['step']} steps and saved: “Trained: {common.md(run.name)}” is in the model "
            "picker, and Resume continues exactly where it stopped.",
            icon=":material/stop_circle:",
        )
    if not st.session_state.get("_train_acknowledged"):
        st.session_state["_train_acknowledged"] = True
        common.forget_model(f"trained-{run.name}")
    _show(snap, presentation)


def _start(preset, name: str, resume: bool, device: str) -> None:
    st.session_state["_train_run"] = _slot().start(
        preset, common.verdict(), name, resume=resume, device=device
    )
    st.session_state["_train_acknowledged"] = False
    st.rerun()


def render(inputs: common.Inputs) -> None:
    st.header("Training", anchor=False)
    st.caption(
        "Section 5.2: `torch.manual_seed(123)`, a fresh `GPTModel`, "
        "AdamW (lr 0.0004, weight decay 0.1 in the "
        "book preset), and `train_model_simple` on The Verdict: an evaluation every `eval_freq` steps over "
        "`eval_iter` batches, and a greedy sample after each epoch. Watch the training loss fall and the "
        "validation loss stop following it."
    )
    with common.friendly_errors():
        run: TrainingRun | None = st.session_state.get("_train_run")
        if run is not None and run.running:
            _live(inputs.presentation)
            return

        c1, c2, c3 = st.columns([2, 1, 2])
        preset_name = c1.radio(
            "Preset",
            sorted(PRESETS, key=lambda n: n != "quick"),
            horizontal=True,
            key="train_preset",
            format_func=lambda n: {"quick": "quick (small GPT)", "book": "book (124M, section 5.2)"}[n],
        )
        base = get_preset(preset_name)
        epochs = c2.number_input("Epochs", 1, 100, base.num_epochs, step=1, key=f"train_epochs_{preset_name}")
        # Widgets not drawn during a live run lose their state: the chosen name is kept here.
        names = st.session_state.setdefault("_train_names", {})
        name = c3.text_input(
            "Save as",
            value=names.get(preset_name, preset_name),
            max_chars=64,
            key=f"train_name_{preset_name}",
        ).strip()
        names[preset_name] = name
        fast = common.fast_toggle("train_fast", inputs.device)
        preset = get_preset(preset_name, num_epochs=int(epochs), fast=fast or None)
        st.caption(
            common.md(preset.description) + f" Needs about {training_memory_gb(preset):.1f} GB of RAM."
        )
        check_name(name)

        if st.button(
            "Estimate the time on this server",
            icon=":material/timer:",
            key="train_estimate",
            help="Times a few real training steps here (a busy server is slower).",
        ):
            st.info(
                describe_estimate(project(_estimate(preset_name, inputs.device, fast), preset)),
                icon=":material/timer:",
            )

        resumable = is_resumable(name)
        b1, b2, _ = st.columns([1, 1, 3])
        start = b1.button("Train", type="primary", icon=":material/play_arrow:", key="train_start")
        resume = b2.button(
            "Resume",
            icon=":material/resume:",
            key="train_resume",
            disabled=not resumable,
            help="Continue the stopped run saved under this name."
            if resumable
            else "No stopped run is saved under this name.",
        )
        if start or resume:
            _start(plan_run(preset, name, resume=resume), name, resume=resume, device=inputs.device)

        if run is not None:
            _finished(run, inputs.presentation)


if __name__ == "__main__":  # run as a page of app.py's st.navigation
    render(common.current_inputs())
