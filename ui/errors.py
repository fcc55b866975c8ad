"""What a visitor sees when a view fails: what to do for their input, a short apology otherwise."""

from __future__ import annotations

import contextlib
import logging

import streamlit as st

from core.errors import LossLensError, ServerBusyError
from ui.formats import md

log = logging.getLogger("losslens")


@contextlib.contextmanager
def friendly_errors():
    """Input errors become a message saying what to do; anything else a short apology."""
    try:
        yield
    except ServerBusyError as e:  # not the visitor's input: say why, and when to try again
        st.warning(md(e), icon=":material/hourglass_top:")
    except LossLensError as e:
        st.error(md(e), icon=":material/error:")
        st.caption("Fix the input in the sidebar; the views update as soon as it is valid.")
    except MemoryError:
        st.error("Out of memory: use fewer or shorter texts.", icon=":material/memory:")
    except Exception:  # the page must never show a traceback
        log.exception("unexpected error")
        st.error(
            "Something unexpected went wrong while computing this view. Try another input or "
            "reload the page; the details are in the server log.",
            icon=":material/bug_report:",
        )
