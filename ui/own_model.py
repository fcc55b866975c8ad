"""Your own model in the app: a file the reader trained with the book's code, loaded for this
visitor's session only.

It never enters the shared model pool and is never listed for another visitor: it lives in
`st.session_state`, so it is freed when the session ends or another model is loaded. Its key
names its content (`own-<sha256 of config and weights>`), so the result caches that every view
shares can only ever serve its numbers to a visitor who holds the very same weights.
"""

from __future__ import annotations

import ipaddress
import logging

import streamlit as st
from streamlit import config as st_config
from streamlit.runtime.scriptrunner import get_script_run_ctx

from core.errors import LossLensError, WeightsError
from core.models.own_model import FORMATS, load_own_model, to_device
from core.models.registry import ModelSpec, register_provider
from core.runtime.deployment import shared_server
from core.runtime.device import available_memory_gb
from core.serving.frozen import freeze, release_free_memory
from ui import formats

log = logging.getLogger("losslens")

CHOICE = "own:load"  # the picker's "Your own model…" entry (not a model until one is loaded)
CHOICE_LABEL = "Your own model…"
_SESSION = "_own_model"  # {"own": OwnModel, "spec": ModelSpec, "on": {device: model}}
_SELECT = "_own_select"  # the key the picker switches to on the next run
_UPLOADS = "_own_uploads"  # the uploader's generation: a new one lets Streamlit drop the old bytes
# A local server takes the book's files whole: GPT-2 XL's state dict is about 6.6 GB.
LOCAL_UPLOAD_MB = 8192
_LOCAL_CAP: int | None = None  # a local server's raised server.maxUploadSize, set once
FILE_TYPES = ["pth", "pt", "bin", "safetensors"]


def _entry() -> dict | None:
    if get_script_run_ctx(suppress_warning=True) is None:  # a builder thread, the CLI: no visitor
        return None
    return st.session_state.get(_SESSION)


def _own_specs(owner: str | None = None) -> list[ModelSpec]:
    """The registry's view of this visitor's own model: listed in their picker and nobody else's
    (the session decides, whatever the owner key: on a local server it is None for everybody)."""
    e = _entry()
    return [e["spec"]] if e else []


register_provider(_own_specs)


def is_own(key: str) -> bool:
    return key == CHOICE or key.startswith("own-")


CHOICE_SPEC = ModelSpec(
    key=CHOICE,
    label=CHOICE_LABEL,
    description="A model you trained with the book's code (model.pth, model_and_optimizer.pth), "
    "a .safetensors file or a Hugging Face folder: load it below.",
    load=lambda seed: get_model(CHOICE),
)


def get_model(key: str, device: str = "cpu"):
    """This session's own model on `device` (moved there once, then kept with it)."""
    if key == CHOICE:
        raise WeightsError(
            "Load your model first: in the sidebar, under Model, choose a file and press Load."
        )
    e = _entry()
    if e is None or e["own"].key != key:
        raise WeightsError(
            "That model is not loaded in this session (each visitor loads their own): load it again "
            "in the sidebar, under Model → Your own model…"
        )
    on = e["on"]
    if device not in on:
        on[device] = to_device(e["own"].model, e["spec"].label, device)
    return on[device]


def _spec(own) -> ModelSpec:
    return ModelSpec(
        key=own.key,
        label=f"Your own: {own.name}",
        description=f"Your own model ({own.describe()}), loaded for this session only; "
        + " ".join(own.notes),
        load=lambda seed, key=own.key: get_model(key),
    )


# --- where a model may come from -------------------------------------------------------------


def loopback_only() -> bool:
    """The server listens on the loopback interface only (--server.address localhost / 127.0.0.1 /
    ::1): nobody on the network can reach it, so a typed path reads the visitor's own disk."""
    address = (st.get_option("server.address") or "").strip().strip("[]")
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # empty (every interface) or a host name
        return False


def path_allowed() -> bool:
    return not shared_server() and loopback_only()


def upload_cap_mb() -> int:
    """The uploader's limit. Streamlit enforces one server-wide cap (server.maxUploadSize) on every
    upload request; a widget's max_upload_size only tells the browser. So a local server raises the
    server-wide cap for a model file, once, to half the memory free then (the upload's bytes and
    the weights read from them must both fit) and at most LOCAL_UPLOAD_MB; a corpus is still
    refused above 20 MB by core. A shared server keeps the small cap of .streamlit/config.toml.
    The cap stays fixed: a widget whose max_upload_size changes loses its file."""
    global _LOCAL_CAP
    if shared_server():
        return int(st.get_option("server.maxUploadSize"))
    if _LOCAL_CAP is None:
        configured = int(st.get_option("server.maxUploadSize"))
        free = available_memory_gb("cpu")
        room = LOCAL_UPLOAD_MB if free is None else int(free * 1024 / 2)
        _LOCAL_CAP = max(configured, min(LOCAL_UPLOAD_MB, room))
    if st.get_option("server.maxUploadSize") != _LOCAL_CAP:
        st_config.set_option("server.maxUploadSize", _LOCAL_CAP)
    return _LOCAL_CAP


def _forget_upload(up) -> None:
    """Drop the uploaded file from Streamlit's per-session store, which otherwise keeps its bytes
    (650 MB for a 124M model) until the session ends: a new uploader key does not release them."""
    ctx = get_script_run_ctx(suppress_warning=True)
    try:
        from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
    except ImportError:  # another Streamlit: its store frees the bytes with the session
        return
    if ctx is not None and isinstance(ctx.uploaded_file_mgr, MemoryUploadedFileManager):
        ctx.uploaded_file_mgr.remove_file(session_id=ctx.session_id, file_id=up.file_id)


# --- the sidebar panel ----------------------------------------------------------------------


def apply_pending_choice() -> None:
    """Before the picker is drawn: switch to a model just loaded, or off one that is gone."""
    if _SELECT in st.session_state:
        st.session_state["model"] = st.session_state.pop(_SELECT)
    chosen = st.session_state.get("model", "")
    if chosen.startswith("own-") and not _own_specs():
        st.session_state["model"] = CHOICE


def panel(sb) -> None:
    """Upload (or, on a loopback-only local server, a path), heads if needed, Load."""
    box = sb.container(border=True)
    e = _entry()
    if e is not None:
        box.caption(
            f"Loaded for this session: **{formats.md(e['own'].name)}**, {FORMATS[e['own'].kind]}: "
            f"{formats.md(e['own'].describe())}."
        )
        for note in e["own"].notes:
            box.caption(formats.md(note))
    cap = upload_cap_mb()
    generation = st.session_state.setdefault(_UPLOADS, 0)
    up = box.file_uploader(
        f"Your model file (at most {cap:,} MB)",
        type=FILE_TYPES,
        key=f"own_file_{generation}",
        max_upload_size=cap,
        help="The book's model.pth (torch.save(model.state_dict(), ...)) or model_and_optimizer.pth, "
        "a .safetensors file, or a Hugging Face model.safetensors. Read with safetensors or "
        "torch.load(weights_only=True): never a full unpickle.",
    )
    path = ""
    if path_allowed():
        path = box.text_input(
            "…or its path on this computer",
            key="own_path",
            placeholder="~/LLMs-from-scratch/ch05/01_main-chapter-code/model.pth",
            help="A file, or a folder saved by save_pretrained (model.safetensors and config.json). "
            "Offered because this server listens on this computer only.",
        ).strip()
    elif shared_server():
        box.caption(
            f"This server is shared, so uploads stop at {cap:,} MB (every visitor's model lives in its "
            "memory) and no path can be typed (it would read the server's disk, not yours). Run "
            "LossLens on your own computer to load a 124M model (about 650 MB)."
        )
    else:
        box.caption(
            "A path field appears when the server listens on this computer only "
            "(`streamlit run app.py --server.address localhost`): others on the network could use it."
        )
    heads = box.number_input(
        "Attention heads",
        min_value=0,
        max_value=4096,
        value=0,
        step=1,
        key="own_heads",
        help="0: from the width, as GPT-2's sizes (768 → 12, 1024 → 16, 1280 → 20, 1600 → 25). "
        "For any other width give the n_heads you trained with.",
    )
    if not box.button("Load", key="own_load", type="primary", icon=":material/upload:"):
        return
    if up is None and not path:
        box.warning(
            "Choose a file first (and let its upload finish)"
            + (", or type its path." if path_allowed() else ".")
        )
        return
    source, name = (up.getvalue(), up.name) if up is not None else (path, None)
    if up is not None:
        _forget_upload(up)
        del up  # with `source` gone after the load, nothing holds the file's bytes
    # Whatever happens, the next run draws a fresh uploader: Streamlit then drops this file's bytes.
    st.session_state[_UPLOADS] = generation + 1
    # The previous model goes first: two models are never held at once for one visitor.
    st.session_state.pop(_SESSION, None)
    release_free_memory()
    try:
        with box, st.spinner("Reading and checking the weights…"):
            own = load_own_model(source, n_heads=int(heads) or None, name=name)
            freeze(own.model)  # served like the app's models: the CPU plug-in, in place
    except LossLensError as err:
        box.error(formats.md(err), icon=":material/error:")
        return
    except MemoryError:
        box.error("Not enough free memory to load this model here.", icon=":material/memory:")
        return
    except Exception:  # a file is the visitor's input: never a traceback, the server keeps serving
        log.exception("loading an own model failed")
        box.error("This file could not be read as a model; the details are in the server log.")
        return
    finally:
        del source
    st.session_state[_SESSION] = {"own": own, "spec": _spec(own), "on": {"cpu": own.model}}
    st.session_state[_SELECT] = own.key
    st.rerun()
