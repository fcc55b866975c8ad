"""A training run across page loads: the server's one run at a time, the time estimate, a
start watched by the page's session, and what became of a run after a reload or a restart."""

from __future__ import annotations

import streamlit as st

from core.errors import InvalidParameterError
from core.models.checkpoints import check_name, is_resumable, saved_run
from core.models.presets import PRESETS, get_preset
from core.serving.run_limits import RunLimits
from core.serving.training_slot import TrainingSlot
from ui import cache, formats, visitor

RUN_PARAM = "run"  # the page address keeps the run's name: it outlives a server restart


@st.cache_resource
def slot() -> TrainingSlot:
    """The one training run this server allows at a time, shared by all sessions."""
    return TrainingSlot()


@st.cache_resource(
    show_spinner="Timing a few training steps in a training process on this server…", max_entries=4
)
def estimate(preset_name: str, device: str, fast: bool = False) -> dict:
    """Real training steps, in a child process that takes the training slot: never in the
    server's own memory."""
    return slot().estimate(get_preset(preset_name, fast=fast or None), cache.verdict(), device=device)


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


def steps(n: int) -> str:
    return f"{n} step" if n == 1 else f"{n} steps"


def start(preset, name: str, resume: bool, device: str) -> None:
    run = slot().start(preset, cache.verdict(), name, resume=resume, device=device, owner=visitor.owner())
    probe = _session_probe()
    if probe is not None:
        run.watch(probe)
    st.session_state["_train_run"] = run
    st.session_state["_train_acknowledged"] = False
    st.session_state.pop("_train_lost", None)
    st.rerun()


def reconnected(kept: dict) -> None:
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
    run = slot().current(owner)
    if run is not None and run.name == name:
        st.session_state["_train_run"] = run
        st.session_state["_train_acknowledged"] = False
        return
    going = slot().run
    if going is not None and going.running and going.name == name:
        return  # still going, for a page this session cannot claim: the queue message says so
    meta = saved_run(name, owner=owner)
    if meta is not None and is_resumable(name, owner=owner):
        preset = meta.get("preset")
        if preset in PRESETS:
            kept["preset"] = preset
            st.session_state.setdefault("_train_names", {})[preset] = name  # the name field's value
        st.session_state["_train_lost"] = (
            f"The server restarted while “{formats.md(name)}” was training, and the run was lost. Its last "
            f"save, after {steps(meta.get('state', {}).get('global_step', -1) + 1)}, can be resumed: "
            "press Resume."
        )
    elif meta is not None:
        st.session_state["_train_lost"] = (
            f"“{formats.md(name)}” finished before the server restarted: it is in the model picker."
        )
    else:
        # On a shared server the page's models went with its session: only a local one can tell.
        before = " before its first save" if owner is None else ""
        st.session_state["_train_lost"] = (
            f"The server restarted while “{formats.md(name)}” was training, and the run was lost{before}. "
            "Start it again with Train."
        )


def limits_note() -> str:
    """What this server allows one run (a shared server caps it; a local one does not)."""
    limits = RunLimits.from_env()
    caps = []
    if limits.max_steps is not None:
        caps.append(f"after {steps(limits.max_steps)}")
    if limits.max_wall_s is not None:
        caps.append(f"after {limits.max_wall_s / 60:.0f} min")
    if visitor.owner() is not None and limits.orphan_grace_s is not None:
        caps.append(f"when its page has been closed for {limits.orphan_grace_s:.0f} s")
    if not caps:
        return ""
    return " On this server a run stops and saves " + ", or ".join(caps) + "; Resume continues it."
