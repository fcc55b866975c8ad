"""View: pretrain a GPT on The Verdict with the book's train_model_simple (section 5.2), live.

The run is a core.serving.background.TrainingRun: a child process at lower priority that trains its own
fresh model (never the shared one). A fragment polls it every second for the progress bar,
the loss curves and the samples. One run at a time per server (core.serving.background.TrainingSlot).
On a shared server the run is its visitor's: only they see and stop it, and it stops and saves
when their page has been gone for a while. The run's name waits in the page's address
(`?run=`), so a page that reconnects after a server restart says what became of it.
"""

from __future__ import annotations

import re

import plotly.graph_objects as go
import streamlit as st

from components import a11y, common, lesson_nav, saved_models, visitor
from core.book.train import START_CONTEXT
from core.errors import InvalidParameterError, ServerBusyError
from core.models.checkpoints import check_name, is_resumable, saved_run
from core.models.presets import (
    PRESETS,
    child_peak_gb,
    describe_estimate,
    get_preset,
    project,
    training_memory_problem,
)
from core.models.registry import trained_key
from core.serving.background import RunLimits, TrainingRun, TrainingSlot
from core.serving.runner import plan_run

POLL_S = 1.0
RUN_PARAM = "run"  # the page address keeps the run's name: it outlives a server restart


@st.cache_resource
def _slot() -> TrainingSlot:
    """The one training run this server allows at a time, shared by all sessions."""
    return TrainingSlot()


@st.cache_resource(
    show_spinner="Timing a few training steps in a training process on this server…", max_entries=4
)
def _estimate(preset_name: str, device: str, fast: bool = False) -> dict:
    """Real training steps, in a child process that takes the training slot: never in the
    server's own memory."""
    return _slot().estimate(get_preset(preset_name, fast=fast or None), common.verdict(), device=device)


def _session_probe():
    """Whether this page's session is still connected, asked by the run between the page's
    polls (None outside a served app, e.g. under AppTest)."""
    from streamlit import runtime
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx(suppress_warning=True)
    if ctx is None or not runtime.exists():
        return None
    instance, session_id = runtime.get_instance(), ctx.session_id
    return lambda: instance.is_active_session(session_id)


def _steps(n: int) -> str:
    return f"{n} step" if n == 1 else f"{n} steps"


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


def sample_line(sample: str, start: str = START_CONTEXT) -> tuple[str, bool]:
    """A greedy sample as the page prints it, and whether its continuation has no word yet.
    Spaces after the prompt are made visible (runs counted), since the book's samples fold line
    breaks into spaces and an early model's continuation is often nothing else."""
    rest = sample[len(start) :] if sample.startswith(start) else sample
    shown = re.sub(r" {4,}", lambda m: f" ␣×{len(m.group())} ", rest)
    return f"{start}{shown}".rstrip(), not any(ch.isalnum() for ch in rest)


def _samples(samples: list) -> None:
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
    run.touch()  # the owner's page is here: the run is not abandoned
    snap = run.snapshot()
    if not snap["running"]:
        st.rerun(scope="app")  # finished or stopped: the full page shows the result and the picker updates
    if st.button("Stop", icon=":material/stop:", key="train_stop", disabled=snap["stopping"]):
        run.stop(owner=visitor.owner())
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
        why = {
            "abandoned": f" because its page was gone for more than {snap['orphan_grace_s'] or 0:.0f} s",
            "steps": f", this server's limit of {_steps(snap['max_steps'] or 0)} for one run,",
            "time": f" at this server's limit of {(snap['max_wall_s'] or 0) / 60:.0f} min for one run,",
        }.get(snap["stop_reason"], "")
        st.warning(
            f"Stopped after {_steps(snap['step'])}{why} and saved: “Trained: {common.md(run.name)}” is in "
            "the model picker, and Resume continues exactly where it stopped.",
            icon=":material/stop_circle:",
        )
    if not st.session_state.get("_train_acknowledged"):
        st.session_state["_train_acknowledged"] = True
        common.forget_model(trained_key(run.name, visitor.owner()))
        st.query_params.pop(RUN_PARAM, None)  # its end is shown: nothing to say after a restart
    _show(snap, presentation)


def _start(preset, name: str, resume: bool, device: str) -> None:
    run = _slot().start(preset, common.verdict(), name, resume=resume, device=device, owner=visitor.owner())
    probe = _session_probe()
    if probe is not None:
        run.watch(probe)
    st.session_state["_train_run"] = run
    st.session_state["_train_acknowledged"] = False
    st.session_state.pop("_train_lost", None)
    st.rerun()


def _reconnected(kept: dict) -> None:
    """A page whose address names a run this session does not hold: it was reloaded, or the
    server restarted. Take the run back if it is still going and ours; else say what became of
    it, and offer Resume where its last save allows."""
    name = st.query_params.get(RUN_PARAM)
    if not name or "_train_run" in st.session_state:
        return
    st.query_params.pop(RUN_PARAM, None)
    try:
        check_name(name)
    except InvalidParameterError:
        return  # not a name this page wrote: nothing to say
    owner = visitor.owner()
    run = _slot().current(owner)
    if run is not None and run.name == name:
        st.session_state["_train_run"] = run
        st.session_state["_train_acknowledged"] = False
        return
    going = _slot().run
    if going is not None and going.running and going.name == name:
        return  # still going, for a page this session cannot claim: the queue message says so
    meta = saved_run(name, owner=owner)
    if meta is not None and is_resumable(name, owner=owner):
        preset = meta.get("preset")
        if preset in PRESETS:
            kept["preset"] = preset
            st.session_state.setdefault("_train_names", {})[preset] = name  # the name field's value
        st.session_state["_train_lost"] = (
            f"The server restarted while “{common.md(name)}” was training, and the run was lost. Its last "
            f"save, after {_steps(meta.get('state', {}).get('global_step', -1) + 1)}, can be resumed: "
            "press Resume."
        )
    elif meta is not None:
        st.session_state["_train_lost"] = (
            f"“{common.md(name)}” finished before the server restarted: it is in the model picker."
        )
    else:
        # On a shared server the page's models went with its session: only a local one can tell.
        before = " before its first save" if owner is None else ""
        st.session_state["_train_lost"] = (
            f"The server restarted while “{common.md(name)}” was training, and the run was lost{before}. "
            "Start it again with Train."
        )


def render(inputs: common.Inputs) -> None:
    lesson_nav.open_view("training", inputs)
    st.caption(
        "Section 5.2: `torch.manual_seed(123)`, a fresh `GPTModel`, "
        "AdamW (lr 0.0004, weight decay 0.1 in the "
        "book preset), and `train_model_simple` on The Verdict: an evaluation every `eval_freq` steps over "
        "`eval_iter` batches, and a greedy sample after each epoch. Watch the training loss fall and the "
        "validation loss stop following it."
    )
    with common.friendly_errors():
        # Widgets not drawn during a live run lose their state: the choices are kept here.
        kept = st.session_state.setdefault("_train_kept", {})
        _reconnected(kept)
        run: TrainingRun | None = st.session_state.get("_train_run")
        if run is not None and run.running:
            run.touch()
            if st.query_params.get(RUN_PARAM) != run.name:
                # Set here, not beside the start's st.rerun(), which can leave the address unchanged.
                st.query_params[RUN_PARAM] = run.name
            _live(inputs.presentation)
            return
        if st.session_state.get("_train_lost"):
            st.warning(st.session_state["_train_lost"], icon=":material/restart_alt:")

        owner = visitor.owner()
        slot = _slot()
        busy = slot.run is not None and slot.run.running  # another visitor's: the queue message says so
        options = sorted(PRESETS, key=lambda n: n != "quick")
        too_big = {n for n in options if not busy and training_memory_problem(get_preset(n), inputs.device)}
        labels = {"quick": "quick (small GPT)", "book": "book (124M, section 5.2)"}
        c1, c2, c3 = st.columns([2, 1, 2])
        preset_name = c1.radio(
            "Preset",
            options,
            index=options.index(kept.get("preset", options[0])),
            horizontal=True,
            key="train_preset",
            format_func=lambda n: labels[n] + (" · too big for this server" if n in too_big else ""),
        )
        kept["preset"] = preset_name
        base = get_preset(preset_name)
        epochs = c2.number_input(
            "Epochs",
            1,
            100,
            kept.get(f"epochs_{preset_name}", base.num_epochs),
            step=1,
            key=f"train_epochs_{preset_name}",
        )
        kept[f"epochs_{preset_name}"] = int(epochs)
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
            common.md(preset.description)
            + f" Its training process needs about {child_peak_gb(preset):.1f} GB of RAM at its peak."
            + _limits_note()
        )
        check_name(name)
        problem = None if busy else training_memory_problem(preset, inputs.device)
        if problem:
            st.warning(
                f"{problem} This preset cannot train here: choose the quick preset, or run "
                f"`python -m core train --preset {preset.name}` on your own machine.",
                icon=":material/memory:",
            )
        storage = saved_models.storage_problem(owner)  # an unwritable cache: no saving, no training
        if storage:
            saved_models.warn(storage)

        if st.button(
            "Estimate the time on this server",
            icon=":material/timer:",
            key="train_estimate",
            disabled=problem is not None,
            help=problem
            or "Times a few real training steps in a training process here (a busy server is slower).",
        ):
            try:
                estimate = _estimate(preset_name, inputs.device, fast)
            except ServerBusyError as e:  # the slot is taken: said here, and the rest of the page stays
                st.warning(common.md(e), icon=":material/hourglass_top:")
            else:
                st.info(describe_estimate(project(estimate, preset)), icon=":material/timer:")

        resumable = is_resumable(name, owner=owner)
        b1, b2, _ = st.columns([1, 1, 3])
        start = b1.button(
            "Train",
            type="primary",
            icon=":material/play_arrow:",
            key="train_start",
            disabled=problem is not None or storage is not None,
            help=problem or storage,
        )
        resume = b2.button(
            "Resume",
            icon=":material/resume:",
            key="train_resume",
            disabled=not resumable or problem is not None or storage is not None,
            help=problem
            or storage
            or (
                "Continue the stopped run saved under this name."
                if resumable
                else "No stopped run is saved under this name."
            ),
        )
        if start or resume:
            slot.check_free()  # the queue message before any other check
            _start(
                plan_run(preset, name, resume=resume, owner=owner), name, resume=resume, device=inputs.device
            )

        if run is not None:
            _finished(run, inputs.presentation)
        if not storage:
            saved_models.render(owner)


def _limits_note() -> str:
    """What this server allows one run (a shared server caps it; a local one does not)."""
    limits = RunLimits.from_env()
    caps = []
    if limits.max_steps is not None:
        caps.append(f"after {_steps(limits.max_steps)}")
    if limits.max_wall_s is not None:
        caps.append(f"after {limits.max_wall_s / 60:.0f} min")
    if visitor.owner() is not None and limits.orphan_grace_s is not None:
        caps.append(f"when its page has been closed for {limits.orphan_grace_s:.0f} s")
    if not caps:
        return ""
    return " On this server a run stops and saves " + ", or ".join(caps) + "; Resume continues it."


if __name__ == "__main__":  # run as a page of app.py's st.navigation
    render(common.current_inputs())
    lesson_nav.try_this("training")
    lesson_nav.footer("training")  # after render: it returns early during a live run
