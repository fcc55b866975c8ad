"""Who is asking: the owner key of this visitor's models and runs on a shared server."""

from __future__ import annotations

import secrets

import streamlit as st

from core.runtime.deployment import shared_server


def owner() -> str | None:
    """None on a local server (one visitor: everything is theirs, as before); on a shared server a
    random key made once per browser session, so one visitor never sees another's models or runs."""
    if not shared_server():
        return None
    if "_owner" not in st.session_state:
        st.session_state["_owner"] = secrets.token_hex(8)
    return st.session_state["_owner"]
