"""LossLens: GPT-2's next-token probabilities become the cross-entropy loss, step by step.

Streamlit runs this file on every interaction: sidebar -> plain inputs -> the chosen view.
All maths lives in `core`; each view is a page file in `components/` with a render(inputs).
"""

import streamlit as st
import torch

from components import common, sidebar, style
from core.priority import FOREGROUND

# One intra-op thread per script run: visitors already run in parallel sessions, and on shared
# cores torch's spinning worker threads cost 3-5x the CPU per forward pass (bench/README.md).
torch.set_num_threads(1)

# One line per view: (page file, title, icon, URL path). The first opens at "/".
# A page file defines render(inputs) and ends with
#     if __name__ == "__main__": render(common.current_inputs())
VIEWS = [
    ("components/tokens.py", "Tokens", ":material/token:", "tokens"),
    ("components/probabilities.py", "Next-token probabilities", ":material/bar_chart:", "probabilities"),
    ("components/figure57.py", "Figure 5.7, step by step", ":material/footprint:", "figure-5-7"),
    ("components/cross_entropy.py", "Cross entropy", ":material/functions:", "cross-entropy"),
    ("components/per_token.py", "Per-token loss", ":material/format_color_text:", "per-token-loss"),
    ("components/temperature.py", "Temperature sweep", ":material/thermostat:", "temperature"),
    ("components/units.py", "Units and averages", ":material/straighten:", "units"),
    ("components/confidence.py", "Confidence against surprise", ":material/scatter_plot:", "confidence"),
    ("components/gradient.py", "Gradient and a training step", ":material/trending_down:", "gradient"),
    ("components/dataset.py", "Dataset losses", ":material/dataset:", "dataset"),
    ("components/training.py", "Training", ":material/model_training:", "training"),
    ("components/compare.py", "Compare models", ":material/compare_arrows:", "compare"),
]

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
with common.friendly_errors(), FOREGROUND.request():
    inputs = sidebar.render()
    common.set_current_inputs(inputs)
    style.apply_style(inputs.presentation)
    pages = [
        st.Page(file, title=title, icon=icon, url_path=path, default=n == 0)
        for n, (file, title, icon, path) in enumerate(VIEWS)
    ]
    st.navigation(pages).run()
