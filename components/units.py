"""Lesson view: the same loss in nats and bits, per token, character and byte, and three averages."""

from __future__ import annotations

import math

import streamlit as st

from ui import errors, formats, lesson_data, lesson_nav, state, widgets

BASES = ["nats", "bits"]


def _n(x, digits: int = 4) -> str:
    return "n/a" if x is None else formats.num(x, digits)


def _ppl(x) -> str:
    return _n(x) if isinstance(x, float) and x < 100 else formats.ppl(x)


def render(inputs: state.Inputs) -> None:
    lesson_nav.open_view("units", inputs)
    st.caption(
        "One loss, many ways to state it. Every number below is a sum of surprisals −log p (in nats) "
        "divided by what it counts: predicted tokens, characters or bytes."
    )
    with errors.friendly_errors():
        u = lesson_data.units(*lesson_data.model_args(inputs), inputs.texts, inputs.temperature)
        b, a = u["batch"], u["averages"]
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("Loss in nats", _n(b["loss_nats"]), help="F.cross_entropy: natural logarithm")
        c2.metric("Loss in bits", _n(b["loss_bits"]), help="nats / ln 2")
        c3.metric(
            "Bits per byte", _n(b["bits_per_byte"]), help="all surprisal in bits / predicted UTF-8 bytes"
        )
        c4.metric("Predicted tokens", f"{b['predicted_tokens']:,}")
        c5, c6, c7, c8 = st.columns(4)
        c5.metric("Perplexity per token", formats.ppl(b["perplexity_per_token"]), help="exp(loss)")
        c6.metric(
            "Perplexity per character",
            _ppl(b["perplexity_per_character"]),
            help="exp(total nats / predicted characters)",
        )
        c7.metric(
            "Perplexity per byte", _ppl(b["perplexity_per_byte"]), help="exp(total nats / predicted bytes)"
        )
        # The bytes shown are the ones the per-byte rates divide by: the predicted ones.
        c8.metric(
            "Predicted characters · bytes",
            f"{b['predicted_characters']:,} · {b['predicted_bytes']:,}",
            help=f"of {b['characters']:,} characters, {b['bytes']:,} bytes in all: the first token of each "
            "text is read, never predicted, so its bytes count in no rate",
        )
        st.info(
            "Why perplexities from different tokenizers cannot be compared: a tokenizer with longer tokens "
            "makes fewer, harder predictions, so its per-token perplexity is higher for the very same "
            "probability of the text. The total surprisal of the text is what both models pay; divided by "
            "bytes (bits per byte) it is a rate any two models can share.",
            icon=":material/straighten:",
        )

        st.subheader("Three averages over a batch of texts", anchor=False)
        base = st.radio("Unit", BASES, horizontal=True, key="units_base", bind="query-params")
        k = 1 / math.log(2) if base == "bits" else 1.0
        d1, d2, d3 = st.columns(3)
        d1.metric(
            f"Token-weighted loss ({base})",
            _n(a["token_weighted_loss"] * k),
            help="What F.cross_entropy returns on the padded batch: every predicted token weighs the same.",
        )
        d2.metric(
            f"Mean of per-text losses ({base})",
            _n(a["mean_of_text_losses"] * k),
            help="Every text weighs the same, short or long.",
        )
        d3.metric(
            "Mean of per-text perplexities",
            formats.ppl(a["mean_of_text_perplexities"]),
            help="exp of each text's loss, then averaged: always ≥ exp of the mean loss (Jensen).",
        )
        st.caption(
            f"exp(token-weighted loss) = {formats.ppl(a['token_weighted_perplexity'])}; exp(mean of per-text "
            f"losses) = {formats.ppl(a['perplexity_of_mean_loss'])}. They agree only when every text has the "
            "same number of predicted tokens (or the same loss); a perplexity tool that averages per-text "
            "perplexities reports a third, larger number."
        )
        rows = [
            {
                "text": n + 1,
                "tokens": r["tokens"],
                "characters": r["characters"],
                "bytes": r["bytes"],
                "predicted bytes": r["predicted_bytes"],
                "predicted tokens": r["predicted_tokens"],
                f"loss ({base})": r["loss_nats"] * k,
                "perplexity per token": r["perplexity_per_token"],
                "perplexity per byte": r["perplexity_per_byte"],
                "bits per byte": r["bits_per_byte"],
            }
            for n, r in enumerate(u["texts"])
        ]
        st.dataframe(rows, hide_index=True)
        widgets.downloads("units", rows, u)


if __name__ == "__main__":  # run as a page of app.py's st.navigation
    render(state.current_inputs())
