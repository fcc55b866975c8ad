"""View: pretrain a GPT on The Verdict with the book's train_model_simple (section 5.2), live.

The run is a core.serving.background.TrainingRun: a child process at lower priority that trains its own
fresh model (never the shared one). A fragment polls it every second for the progress bar,
the loss curves and the samples. One run at a time per server (core.serving.training_slot.TrainingSlot).
On a shared server the run is its visitor's: only they see and stop it, and it stops and saves
when their page has been gone for a while. The run's name waits in the page's address
(`?run=`), so a page that reconnects after a server restart says what became of it.
"""

from __future__ import annotations

import streamlit as st

from core.errors import ServerBusyError
from core.models.checkpoints import check_name, is_resumable
from core.models.presets import (
    PRESETS,
    child_peak_gb,
    describe_estimate,
    get_preset,
    project,
    training_memory_problem,
)
from core.models.registry import trained_key
from core.serving.background import TrainingRun
from core.serving.runner import plan_run
from ui import (
    cache,
    errors,
    formats,
    lesson_nav,
    saved_models,
    state,
    training_progress,
    training_run,
    visitor,
    widgets,
)

POLL_S = 1.0


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
    training_progress.show(snap, presentation)


def _finished(run: TrainingRun, presentation: bool) -> None:
    snap = run.snapshot()
    if snap["error"]:
        st.error(formats.md(snap["error"]), icon=":material/error:")
    elif snap["finished"]:
        st.success(
            f"Finished and saved. “Trained: {formats.md(run.name)}” is now in the model picker, "
            "so every view can use it.",
            icon=":material/check_circle:",
        )
    elif snap["stopped"]:
        why = {
            "abandoned": f" because its page was gone for more than {snap['orphan_grace_s'] or 0:.0f} s",
            "steps": f", this server's limit of {training_run.steps(snap['max_steps'] or 0)} for one run,",
            "time": f" at this server's limit of {(snap['max_wall_s'] or 0) / 60:.0f} min for one run,",
        }.get(snap["stop_reason"], "")
        st.warning(
            f"Stopped after {training_run.steps(snap['step'])}{why} and saved: "
            f"“Trained: {formats.md(run.name)}” is in the model picker, and Resume continues exactly "
            "where it stopped.",
            icon=":material/stop_circle:",
        )
    if not st.session_state.get("_train_acknowledged"):
        st.session_state["_train_acknowledged"] = True
        cache.forget_model(trained_key(run.name, visitor.owner()))
        st.query_params.pop(training_run.RUN_PARAM, None)  # its end is shown: nothing to say after a restart
    training_progress.show(snap, presentation)


def render(inputs: state.Inputs) -> None:
    lesson_nav.open_view("training", inputs)
    st.caption(
        "Section 5.2: `torch.manual_seed(123)`, a fresh `GPTModel`, "
        "AdamW (lr 0.0004, weight decay 0.1 in the "
        "book preset), and `train_model_simple` on The Verdict: an evaluation every `eval_freq` steps over "
        "`eval_iter` batches, and a greedy sample after each epoch. Watch the training loss fall and the "
        "validation loss stop following it."
    )
    with errors.friendly_errors():
        # Widgets not drawn during a live run lose their state: the choices are kept here.
        kept = st.session_state.setdefault("_train_kept", {})
        training_run.reconnected(kept)
        run: TrainingRun | None = st.session_state.get("_train_run")
        if run is not None and run.running:
            run.touch()
            if st.query_params.get(training_run.RUN_PARAM) != run.name:
                # Set here, not beside the start's st.rerun(), which can leave the address unchanged.
                st.query_params[training_run.RUN_PARAM] = run.name
            _live(inputs.presentation)
            return
        if st.session_state.get("_train_lost"):
            st.warning(st.session_state["_train_lost"], icon=":material/restart_alt:")

        owner = visitor.owner()
        slot = training_run.slot()
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
        fast = widgets.fast_toggle("train_fast", inputs.device)
        preset = get_preset(preset_name, num_epochs=int(epochs), fast=fast or None)
        st.caption(
            formats.md(preset.description)
            + f" Its training process needs about {child_peak_gb(preset):.1f} GB of RAM at its peak."
            + training_run.limits_note()
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
                estimate = training_run.estimate(preset_name, inputs.device, fast)
            except ServerBusyError as e:  # the slot is taken: said here, and the rest of the page stays
                st.warning(formats.md(e), icon=":material/hourglass_top:")
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
            training_run.start(
                plan_run(preset, name, resume=resume, owner=owner), name, resume=resume, device=inputs.device
            )

        if run is not None:
            _finished(run, inputs.presentation)
        if not storage:
            saved_models.render(owner)


if __name__ == "__main__":  # run as a page of app.py's st.navigation
    render(state.current_inputs())
    lesson_nav.try_this("training")
    lesson_nav.footer("training")  # after render: it returns early during a live run
