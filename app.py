"""LossLens: GPT-2's next-token probabilities become the cross-entropy loss, step by step."""

import streamlit as st

st.set_page_config(page_title="LossLens", layout="wide")
st.title("LossLens")
