"""View 1: the texts as tokens, and the shift by one that makes inputs and targets."""

from __future__ import annotations

import streamlit as st

from core.lessons.loss import IGNORE_INDEX, PAD_ID
from ui import cache, errors, lesson_nav, state, style, widgets


def _shift_table(t: dict) -> str:
    """All tokens, then one column per position: the input over the target it must predict.
    Columns wrap, so a long text stays readable."""
    ids, pieces, is_bytes = t["token_ids"], t["tokens"], t["byte_tokens"]
    kinds = [style.chip_kind(i, b) for i, b in zip(ids, is_bytes, strict=True)]
    chips = [style.chip(p, i, k) for p, i, k in zip(pieces, ids, kinds, strict=True)]
    targets = [
        style.chip(p, i, f"target {k}") for p, i, k in zip(pieces[1:], ids[1:], kinds[1:], strict=True)
    ]
    head = (
        '<div class="ll-col ll-head"><span>inputs = tokens[:-1]</span>'
        '<span class="ll-arrow" aria-hidden="true"> </span>'
        "<span>targets = tokens[1:]</span></div>"
    )
    cols = "".join(
        f'<div class="ll-col" title="position {n}">{inp}'
        f'<span class="ll-arrow" aria-hidden="true">↓</span>{tgt}</div>'
        for n, (inp, tgt) in enumerate(zip(chips[:-1], targets, strict=True))
    )
    return (
        f'<div class="ll-row"><span class="ll-rowname">tokens</span>{"".join(chips)}</div>'
        f'<div class="ll-row ll-shift">{head}{cols}</div>'
    )


def render(inputs: state.Inputs) -> None:
    lesson_nav.open_view("tokens", inputs)
    with errors.friendly_errors():
        s = cache.summary(inputs)
        widgets.metrics(s)
        st.caption(
            "GPT-2's byte-pair encoding splits each text into tokens (␣ marks a space, ↵ a newline; "
            "dashed chips are pieces of a multi-byte character). The model reads `inputs` and must "
            "predict `targets`: the same tokens shifted left by one, so each position predicts the "
            "token after it."
        )
        rows = []
        for r, t in enumerate(s["texts"]):
            st.subheader(
                f"Text {r + 1}: {len(t['token_ids'])} tokens, {len(t['positions'])} predictions", anchor=False
            )
            st.text(t["text"])
            style.html_block(_shift_table(t))
            rows += [
                {
                    "text": r + 1,
                    "position": p["position"],
                    "input_id": p["input_id"],
                    "input": p["input"],
                    "target_id": p["target_id"],
                    "target": p["target"],
                }
                for p in t["positions"]
            ]
        shapes = s["shapes"]
        width = shapes["inputs"][1]
        inputs_rows = [[p["input_id"] for p in t["positions"]] for t in s["texts"]]
        target_rows = [[p["target_id"] for p in t["positions"]] for t in s["texts"]]
        pad = (
            f" (shorter texts padded: inputs with {PAD_ID}, targets with {IGNORE_INDEX}, "
            "which the loss ignores)"
            if s["padded"]
            else ""
        )
        st.markdown(f"**As tensors**, shape {shapes['inputs']}{pad}:")
        st.code(
            "inputs = torch.tensor(" + _fmt(inputs_rows, width, PAD_ID) + ")\n"
            "targets = torch.tensor(" + _fmt(target_rows, width, IGNORE_INDEX) + ")",
            language="python",
        )
        widgets.downloads("tokens", rows)
        lesson_nav.try_this("tokens")
    lesson_nav.footer("tokens")


def _fmt(rows: list[list[int]], width: int, pad: int) -> str:
    return "[\n" + "".join(f"    {r + [pad] * (width - len(r))},\n" for r in rows) + "]"


if __name__ == "__main__":  # run as a page of app.py's st.navigation
    render(state.current_inputs())
