"""View 6: the loss over a whole corpus, split into training and validation (section 5.1.3)."""

from __future__ import annotations

from dataclasses import asdict

import plotly.graph_objects as go
import streamlit as st

from core.errors import CorpusError
from core.models.corpus import MAX_CORPUS_BYTES, MAX_CORPUS_LABEL, decode_corpus_bytes, validate_corpus_text
from core.models.loaders import LoaderSettings, make_loaders
from core.serving.requests import evaluate_dataset
from ui import a11y, cache, charts, errors, formats, lesson_nav, position_loss, state, store, style, widgets

SOURCES = ["The Verdict", "Upload a file", "Paste text"]


@st.cache_data(max_entries=16, show_spinner=False)
def counts(text: str, settings: tuple) -> dict:
    """Token, window and batch counts of the loaders (cheap: no model)."""
    data = make_loaders(text, LoaderSettings(*settings), cache.tokenizer())
    return data.to_dict()


def _corpus() -> tuple[str, str] | None:
    source = st.radio("Corpus", SOURCES, horizontal=True, key="corpus", bind="query-params")
    if source == SOURCES[0]:
        try:
            return cache.verdict(), "The Verdict"
        except CorpusError as e:
            st.error(formats.md(e), icon=":material/cloud_off:")
            st.caption("Or choose “Upload a file” or “Paste text” above.")
            return None
    if source == SOURCES[1]:
        up = st.file_uploader(
            f"Upload a UTF-8 text file (at most {MAX_CORPUS_LABEL})",
            type=None,
            key="corpus_file",
            # The browser refuses more, whatever the server-wide cap (raised for model files).
            max_upload_size=MAX_CORPUS_BYTES // 1_000_000,
        )
        if up is None:
            st.info("Upload a plain-text file to compute its loss.", icon=":material/upload_file:")
            return None
        return decode_corpus_bytes(up.getvalue(), up.name), up.name
    text = st.text_area(
        "Corpus text", key="corpus_text", height=200, placeholder="Paste a few thousand words…"
    )
    if not text.strip():
        st.info("Paste a text of at least a few hundred words.", icon=":material/content_paste:")
        return None
    return validate_corpus_text(text, "The pasted text"), "pasted text"


def _settings(context_length: int) -> tuple[LoaderSettings, int | None]:
    d = LoaderSettings()
    with st.expander("Split and loader settings (the book's defaults)", expanded=False):
        c1, c2, c3 = st.columns(3)
        ratio = c1.number_input("Train ratio", 0.05, 0.95, d.train_ratio, step=0.05, key="ds_ratio")
        length = c2.number_input(
            "Context length", 2, context_length, min(d.context_length, context_length), step=1, key="ds_len"
        )
        stride = c3.number_input("Stride", 1, 4096, d.stride, step=1, key="ds_stride")
        c4, c5, c6 = st.columns(3)
        batch = c4.number_input("Batch size", 1, 64, d.batch_size, step=1, key="ds_batch")
        seed = c5.number_input("Shuffle seed", 0, 2**31 - 1, d.seed, step=1, key="ds_seed")
        n = c6.number_input("Batches per split (0 = all)", 0, 100_000, 0, step=1, key="ds_batches")
    settings = LoaderSettings(float(ratio), int(length), int(stride), int(batch), int(seed))
    return settings.validate(context_length), (int(n) or None)


def figure(r: dict) -> go.Figure:
    fig = go.Figure()
    for name, key, colour in (("training", "train", style.NEUTRAL), ("validation", "val", style.ACCENT)):
        losses = r[f"{key}_batch_losses"]
        fig.add_scatter(
            x=list(range(1, len(losses) + 1)),
            y=losses,
            mode="lines+markers",
            name=f"{name} batches",
            line=dict(color=colour),
        )
        if r[f"{key}_loss"] is not None:
            fig.add_hline(
                y=r[f"{key}_loss"],
                line_dash="dot",
                line_color=colour,
                annotation_text=f"{name} mean {r[f'{key}_loss']:.4f}",
                annotation_font_color=style.ACCENT_TEXT if colour == style.ACCENT else colour,
            )
    fig.update_xaxes(
        title="batch", dtick=1 if max(len(r["train_batch_losses"]), len(r["val_batch_losses"])) < 25 else None
    )
    fig.update_yaxes(title="cross entropy (nats)")
    fig.update_layout(
        height=380, title="Loss per batch", legend=dict(orientation="h", yanchor="top", y=-0.18)
    )
    return fig


def _show(r: dict, presentation: bool) -> None:
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Training loss", formats.num(r["train_loss"]))
    c2.metric("Validation loss", formats.num(r["val_loss"]))
    c3.metric(
        "Training perplexity",
        formats.ppl(r["train_perplexity"]) if r["train_perplexity"] is not None else "n/a",
    )
    c4.metric(
        "Validation perplexity",
        formats.ppl(r["val_perplexity"]) if r["val_perplexity"] is not None else "n/a",
    )
    if r.get("precision") == "bfloat16":
        d = r["bf16_differences"]
        st.info(
            "Fast mode: the matmuls ran in bfloat16. On each split's first batch, run again in "
            f"float32, bfloat16 moved the loss by {d['train']:+.5f} (training) and {d['val']:+.5f} "
            "(validation). The book's numbers are float32.",
            icon=":material/speed:",
        )
    charts.chart(figure(r), "dataset-batch-losses", presentation, a11y.describe_dataset(r))
    rows = [{"split": "train", "batch": i + 1, "loss": x} for i, x in enumerate(r["train_batch_losses"])]
    rows += [{"split": "val", "batch": i + 1, "loss": x} for i, x in enumerate(r["val_batch_losses"])]
    widgets.downloads("dataset", rows, r)


def _n(k: int, noun: str) -> str:
    return f"{k:,} {noun}" + ("" if k == 1 else "es" if noun.endswith("ch") else "s")


def _counts_table(c: dict) -> None:
    st.dataframe(
        [
            {
                "split": "whole text",
                "characters": c["characters"],
                "tokens": c["tokens"],
                "windows": None,
                "batches": None,
                "tokens in batches": None,
            },
            *[
                {
                    "split": s,
                    "characters": c[s]["characters"],
                    "tokens": c[s]["tokens"],
                    "windows": c[s]["windows"],
                    "batches": c[s]["batches"],
                    "tokens in batches": c[s]["batch_tokens"],
                }
                for s in ("train", "val")
            ],
        ],
        hide_index=True,
    )


def render(inputs: state.Inputs) -> None:
    lesson_nav.open_view("dataset", inputs)
    st.caption(
        "Section 5.1.3: split the corpus into training and validation text, cut each into windows of "
        "`context_length` tokens with `create_dataloader_v1`, and average `calc_loss_batch` over the "
        "batches (`calc_loss_loader`)."
    )
    with errors.friendly_errors():
        _body(inputs)
    lesson_nav.try_this("dataset")
    lesson_nav.footer("dataset")


def _body(inputs: state.Inputs) -> None:
    corpus = _corpus()
    if corpus is None:
        return
    text, name = corpus
    model = cache.get_model(inputs.model, inputs.seed, inputs.device)
    # The losses come first, above the settings that made them: on a projector they are the view.
    results = st.container()
    settings, num_batches = _settings(model.cfg["context_length"])
    c = counts(text, tuple(asdict(settings).values()))
    st.markdown(
        f"**{formats.md(name)}**: {c['characters']:,} characters, {c['tokens']:,} tokens; "
        f"training {_n(c['train']['batches'], 'batch')} ({c['train_tokens']:,} tokens), "
        f"validation {_n(c['val']['batches'], 'batch')} ({c['val_tokens']:,} tokens)."
    )
    for w in c["warnings"]:
        st.warning(w, icon=":material/warning:")
    with st.expander("Token and batch counts"):
        _counts_table(c)
    # Hardware notes (bfloat16, CPU features) are for the laptop, not for the projector.
    fast = False if inputs.presentation else widgets.fast_toggle("ds_fast", inputs.device)
    key = store.dataset_key(inputs.model, inputs.seed, text, settings, num_batches, inputs.device, fast)
    with results:
        stopped = st.session_state.pop("_ds_running", None)
        if stopped and store.get(key) is None:
            st.warning(
                f"Stopped after {stopped} batches; press Compute to start again.",
                icon=":material/stop_circle:",
            )
        if store.get(key) is None:
            slot = st.empty()
            if not slot.button("Compute", type="primary", icon=":material/calculate:", key="ds_compute"):
                st.info("Press Compute to run the model over both splits.", icon=":material/info:")
                return
            slot.empty()
            n_train = min(c["train"]["batches"], num_batches or c["train"]["batches"])
            _compute(model, text, settings, num_batches, key, fast, n_train)
        if (r := store.get(key)) is not None:
            _show(r, inputs.presentation)
            st.caption("Computed once and kept: coming back to this view shows it again at once.")
    if (r := store.get(key)) is not None:
        position_loss.section(model, text, settings, num_batches, key, inputs.presentation)


def progress_text(done: int, total: int, split: str, n_train: int) -> str:
    """core counts both splits on one bar (training first); each split is named with its own count."""
    if split == "train":
        return f"training batches: {min(done, n_train)} of {n_train}"
    return f"validation batches: {done - n_train} of {total - n_train} (training done)"


def _compute(model, text, settings, num_batches, key, fast=False, n_train=0) -> None:
    bar = st.progress(0.0, text="Starting…")
    # Any click reruns the page, which interrupts this loop at the next progress update.
    stop = st.empty()
    stop.button("Stop", icon=":material/stop:", key="ds_stop")

    def progress(done: int, total: int, split: str) -> None:
        st.session_state._ds_running = f"{done} of {total}"  # read by the run a Stop click starts
        bar.progress(done / max(total, 1), text=progress_text(done, total, split, n_train))

    r = evaluate_dataset(
        model, text, settings, num_batches, progress=progress, tokenizer=cache.tokenizer(), fast=fast
    )
    st.session_state.pop("_ds_running", None)
    bar.empty()
    stop.empty()
    if r.cancelled:
        st.warning("Stopped before the end; press Compute to start again.", icon=":material/stop_circle:")
        return
    store.put(key, r.to_dict())


if __name__ == "__main__":  # run as a page of app.py's st.navigation
    render(state.current_inputs())
