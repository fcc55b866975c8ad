"""Pieces several views draw: the loss metrics, the CSV / JSON downloads, the fast-mode toggle."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from core.lessons.report import book_differences, perplexity_note
from core.runtime.precision import bf16_unavailable
from ui import a11y
from ui.formats import num, ppl
from ui.state import current_inputs, has_inputs


def metrics(s: dict) -> None:
    """The two numbers of section 5.1, on top of every text view."""
    c1, c2, c3, c4 = st.columns(4)
    c1.metric(
        "Loss (cross entropy)",
        num(s["loss"]),
        help="torch.nn.functional.cross_entropy(logits_flat, targets_flat)",
    )
    book = not book_differences(**_book_state()) if has_inputs() else True
    c2.metric("Perplexity", ppl(s["perplexity"]), help=perplexity_note(book))
    c3.metric(
        "Predicted tokens", f"{s['num_tokens']}", help="Each token but the first of every text is a target."
    )
    c4.metric("Bits per token", num(s["bits_per_token"], 3), help="loss / ln 2")
    a11y.announce(a11y.loss_announcement(s))  # heard after an edit, without re-reading the page


def _book_state() -> dict:
    i = current_inputs()
    return {"model": i.model, "seed": i.seed, "texts": i.texts, "temperature": i.temperature}


def downloads(name: str, rows: list[dict], payload: dict | None = None, key: str | None = None) -> None:
    """CSV of the table shown and JSON of the values behind the view.

    The files are made on click (callables): no file is stored on every rerun, and a quick
    rerun cannot remove a file the browser is still checking (a 404 under load). A click does
    not rerun the page, so clicking one button right after the other finds its file."""

    def csv() -> bytes:
        return pd.DataFrame(rows).to_csv(index=False).encode("utf-8")

    def as_json() -> bytes:
        return json.dumps(payload if payload is not None else rows, indent=1, ensure_ascii=False).encode(
            "utf-8"
        )

    formats = [("CSV", csv, "text/csv"), ("JSON", as_json, "application/json")]
    for column, (kind, data, mime) in zip(st.columns([1, 1, 3])[:2], formats, strict=True):
        column.download_button(
            f"Download {kind}",
            data,
            file_name=f"losslens-{name}.{kind.lower()}",
            mime=mime,
            key=f"{kind.lower()}-{key or name}",
            on_click="ignore",  # no rerun: the other button's file stays valid
            icon=":material/download:",
        )


def fast_toggle(key: str, device: str) -> bool:
    """The bfloat16 fast mode, offered only where it is fast; the reason shown where it is not.
    Not on a projector: hardware notes (bfloat16, CPU features) are for the laptop."""
    if has_inputs() and current_inputs().presentation:
        return False
    reason = bf16_unavailable(device)
    fast = st.toggle(
        "Fast mode (bfloat16)",
        key=key,
        value=False,
        disabled=reason is not None,
        help="Runs the matmuls in bfloat16 (autocast): faster where the hardware has it. Losses move "
        "in their third or fourth digit, and the result says by how much. The book's numbers are float32.",
    )
    if reason:
        st.caption(f"Fast mode is not offered: {reason}.")
    return fast and reason is None
