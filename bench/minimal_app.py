"""The floor for bench/load_protocol.py: a minimal Streamlit app (a title, 4 metrics, a text area).

Run from the repository root, so it gets the same .streamlit/config.toml as LossLens. Its metrics
are plain counts of the text, so a visitor can check that it got the numbers for its own text."""

import streamlit as st

st.title("Minimal app")
text = st.text_area("Texts (one per line)", "every effort moves you\nI really like chocolate", key="text")
c1, c2, c3, c4 = st.columns(4)
c1.metric("Characters", len(text))
c2.metric("Words", len(text.split()))
c3.metric("Lines", len(text.splitlines()))
c4.metric("Bytes", len(text.encode("utf-8")))
