"""LossLens: GPT-2's next-token probabilities become the cross-entropy loss, step by step.

Streamlit runs this file on every interaction: sidebar -> plain inputs -> the chosen view.
All maths lives in `core`; each view is a page file in `components/` with a render(inputs),
drawn with the helpers in `ui/`.
"""

import streamlit as st
import torch

from core.serving.priority import FOREGROUND
from ui import errors, lesson_nav, sidebar, state, style

# One intra-op thread per script run: visitors already run in parallel sessions, and on shared
# cores torch's spinning worker threads cost several times the CPU per pass (docs/performance.md).
torch.set_num_threads(1)

# An emoji favicon is drawn locally; a :material/...: one is fetched from a font CDN (fails offline).
# Presentation mode starts with the sidebar collapsed: the projector shows only the lesson.
# (The toggle's state is known before this run; a shared link carries it as a query parameter.)
_presenting = st.session_state.get("presentation", st.query_params.get("presentation") == "true")
st.set_page_config(
    page_title="LossLens",
    page_icon="🔎",
    layout="wide",
    initial_sidebar_state="collapsed" if _presenting else "auto",
)
# A run counts as a visitor's request: a training child waits between its steps until none is in flight.
with errors.friendly_errors(), FOREGROUND.request():
    # Two groups: the lesson in its order (the start page opens at "/"), then the extra views.
    # Each view keeps its URL path, so links shared before the grouping still open it.
    sections = {
        section: [
            st.Page(v.file, title=v.title, icon=v.icon, url_path=v.path, default=v is lesson_nav.LESSON[0])
            for v in views
        ]
        for section, views in (
            (lesson_nav.LESSON_SECTION, lesson_nav.LESSON),
            (lesson_nav.EXTRA_SECTION, lesson_nav.EXTRAS),
        )
    }
    # Streamlit draws sectioned navigation as a list with headers inside it (invalid list markup for
    # screen readers): the same sections are drawn as plain links by lesson_nav.sidebar_menu instead.
    page = st.navigation(sections, position="hidden")
    lesson_nav.sidebar_menu()
    inputs = sidebar.render()
    state.set_current_inputs(inputs)
    style.apply_style(inputs.presentation)
    page.run()
