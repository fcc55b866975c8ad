"""View 4: the six steps by hand against torch.nn.functional.cross_entropy, and perplexity."""

from __future__ import annotations

import math

import streamlit as st

from core.lessons.loss import IGNORE_INDEX
from core.lessons.report import perplexity_note
from ui import cache, errors, formats, lesson_nav, state, surprisal, widgets

LOW_TEMPERATURE = 0.001  # divides the logits by 1000: far beyond what float32's exp can hold


def _full(x) -> str:
    return formats.num(x) if x is None or isinstance(x, str) else repr(float(x))


def _diff(d) -> str:
    if d is None or isinstance(d, str):
        return formats.num(d)
    return "0 (identical)" if d == 0 else f"{d:+.4e}"


def render(inputs: state.Inputs) -> None:
    lesson_nav.open_view("cross-entropy", inputs)
    with errors.friendly_errors():
        s = cache.summary(inputs)
        if not inputs.presentation:
            widgets.metrics(s)
        v = s["vocab_size"]
        book = lesson_nav.is_book_example(inputs)

        st.subheader("By hand and built in: the same number", anchor=False)
        c1, c2, c3 = st.columns(3)
        c1.metric(
            "Six steps by hand (naive)",
            formats.num(s["neg_avg_log_probas"]),
            help="neg_avg_log_probas: torch.log of the softmax's probabilities",
        )
        c2.metric(
            "F.cross_entropy (stable)",
            formats.num(s["loss"]),
            help="torch.nn.functional.cross_entropy(logits_flat, targets_flat): log-sum-exp on the logits",
        )
        c3.metric(
            "Difference", _diff(s["difference"]), help="float32 rounding: the two sum in a different order"
        )
        surprisal.section(s, inputs.presentation, "cross-entropy-surprisal")
        st.code(
            f"neg_avg_log_probas = {_full(s['neg_avg_log_probas'])}\n"
            f"loss               = {_full(s['loss'])}\n"
            f"difference         = {_full(s['difference'])}",
            language="text",
        )

        st.subheader("Shapes before and after flattening", anchor=False)
        sh = s["shapes"]
        st.code(
            "logits_flat = logits.flatten(0, 1)\n"
            "targets_flat = targets.flatten()\n"
            "loss = torch.nn.functional.cross_entropy(logits_flat, targets_flat)\n\n"
            f"logits:  {sh['logits']}  ->  logits_flat:  {sh['logits_flat']}\n"
            f"targets: {sh['targets']}        ->  targets_flat: {sh['targets_flat']}",
            language="python",
        )
        if s["padded"]:
            st.caption(
                f"Shorter texts are padded with target {IGNORE_INDEX} (ignore_index): "
                "those positions count for nothing."
            )

        st.subheader("Perplexity", anchor=False)
        p = s["perplexity"]
        meaning = (
            f"The model is as unsure as if it picked uniformly among about **{formats.ppl(p)}** tokens "
            "at each step "
            f"(the vocabulary has {v:,})."
            if not isinstance(p, str)
            else "The loss is so large that exp(loss) overflows a float."
        )
        if not isinstance(p, str) and p > v:
            meaning += (
                f" That is **more than the {v:,} tokens of the vocabulary**: the loss is above "
                f"ln({v:,}) = {math.log(v):.2f}, worse than a uniform guess. The model is confidently "
                "wrong: it gives much of its probability to other tokens than the ones that come next."
            )
        st.markdown(meaning)
        st.caption(perplexity_note(book))
        rows = [
            {
                "model": "This model on your text",
                "loss (nats)": s["loss"],
                "perplexity": formats.ppl(p),
                "bits per token": s["bits_per_token"],
            },
            {
                "model": f"Uniform guess over {v:,} tokens",
                "loss (nats)": math.log(v),
                "perplexity": f"{v:,}",
                "bits per token": math.log2(v),
            },
            {
                "model": "Perfect model (p = 1 for each target)",
                "loss (nats)": 0.0,
                "perplexity": "1",
                "bits per token": 0.0,
            },
        ]
        st.dataframe(
            rows,
            hide_index=True,
            column_config={
                "loss (nats)": st.column_config.NumberColumn(format="%.4f"),
                "bits per token": st.column_config.NumberColumn(format="%.3f"),
            },
        )
        st.caption(f"Uniform baseline: ln({v:,}) = {math.log(v):.4f}; bits per token = loss / ln 2.")

        st.subheader("Why the built-in works from logits", anchor=False)
        low = cache.summary(state.Inputs(**{**inputs.__dict__, "top_k": 1}), temperature=LOW_TEMPERATURE)
        naive, stable = low["neg_avg_log_probas"], low["loss"]
        st.markdown(
            f"At temperature {LOW_TEMPERATURE} the logits are multiplied by {1 / LOW_TEMPERATURE:,.0f}. "
            "`torch.softmax` then rounds most target probabilities to exactly 0, and `torch.log(0)` is −∞: "
            "the six steps by hand give ∞. `F.cross_entropy` works in log space "
            "(log-sum-exp) and stays finite on the same logits."
        )
        underflow = sum(1 for x in low["log_probas"] if x == "-inf")
        c1, c2, c3 = st.columns(3)
        c1.metric(f"By hand (naive), T = {LOW_TEMPERATURE}", formats.num(naive))
        c2.metric(f"F.cross_entropy (stable), T = {LOW_TEMPERATURE}", formats.num(stable))
        c3.metric("Targets with probability 0", f"{underflow} of {low['num_tokens']}")
        st.caption(
            f"Your current temperature is {inputs.temperature:g}. Change it in the sidebar and watch the "
            "by-hand and built-in results part ways at low values."
        )
        widgets.downloads(
            "cross-entropy",
            rows,
            {
                "neg_avg_log_probas": s["neg_avg_log_probas"],
                "loss": s["loss"],
                "difference": s["difference"],
                "shapes": sh,
                "perplexity": p,
                "bits_per_token": s["bits_per_token"],
                "uniform_loss": s["uniform_loss"],
                "uniform_perplexity": s["uniform_perplexity"],
                "low_temperature": {
                    "temperature": LOW_TEMPERATURE,
                    "by_hand": naive,
                    "cross_entropy": stable,
                    "zero_probability_targets": underflow,
                },
            },
        )
        lesson_nav.try_this("cross-entropy")
    lesson_nav.footer("cross-entropy")


if __name__ == "__main__":  # run as a page of app.py's st.navigation
    render(state.current_inputs())
