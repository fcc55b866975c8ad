"""View: the same text through several models side by side: loss, perplexity, top-k, dataset losses.

Untrained, trained (quick or book preset) and pretrained GPT-2 read the sidebar's texts;
the numbers come from the same cached core calls as every other view, so they agree with them.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
import streamlit as st

from core.errors import LossLensError
from core.models.hub import cached_gpt2_path
from core.models.loaders import LoaderSettings
from core.models.registry import available_models
from core.serving.requests import evaluate_dataset
from ui import (
    a11y,
    cache,
    charts,
    errors,
    formats,
    lesson_nav,
    state,
    store,
    style,
    token_compare,
    visitor,
    widgets,
)

MAX_MODELS = 4  # each model is loaded in turn; a 124M model takes a few seconds


def _default(models: dict) -> list[str]:
    keys = ["untrained-124m"] if "untrained-124m" in models else []
    keys += [k for k in models if k.startswith("trained-")][:2]
    if "gpt2-124m" in models and cached_gpt2_path("124M") is not None:  # no download without asking
        keys.append("gpt2-124m")
    return keys[:MAX_MODELS]


def _summaries(inputs: state.Inputs, keys: list[str]) -> dict[str, dict | str]:
    out: dict[str, dict | str] = {}
    bar = st.progress(0.0, text="Running the models…")
    for n, key in enumerate(keys):
        bar.progress(n / len(keys), text=f"{cache.get_spec(key).label}…")
        try:
            out[key] = cache.summary(inputs, model=key)
        except LossLensError as e:  # e.g. pretrained weights offline, or a text longer than a small context
            out[key] = str(e)
    bar.empty()
    return out


def _loss_chart(labels: list[str], losses: list[float], presentation: bool) -> None:
    fig = go.Figure(
        go.Bar(
            x=labels,
            y=losses,
            marker_color=style.VIRIDIS[2],
            text=[f"{x:.3f}" for x in losses],
            textposition="outside",
        )
    )
    fig.update_yaxes(title="cross entropy (nats)")
    fig.update_layout(height=360, title="Loss on the sidebar's texts")
    charts.chart(fig, "compare-loss", presentation, a11y.describe_losses(labels, losses))


def lowest_note(labels: list[str], losses: list[float], untrained: list[bool]) -> str | None:
    """Which model scores lowest, and why an untrained one can beat a trained one."""
    if len(labels) < 2:
        return None
    i = min(range(len(losses)), key=lambda n: losses[n])
    ln_v = math.log(50257)
    if not untrained[i]:
        return f"Lowest: **{formats.md(labels[i])}**: it gives the sidebar's texts the most probability."
    above = [formats.md(labels[n]) for n, x in enumerate(losses) if x > ln_v and not untrained[n]]
    why = f" ({', '.join(above)}: above ln 50,257 = {ln_v:.2f}, worse than a uniform guess)" if above else ""
    return (
        f"Lowest: **{formats.md(labels[i])}**, the untrained model. It sits near the uniform guess "
        f"ln 50,257 = {ln_v:.2f} on any text. A model trained on one small corpus (such as The Verdict) "
        "has learned that text's words and is confidently wrong on other sentences" + why + ", so on "
        "these texts it scores worse than not knowing anything. On text like its corpus it scores lower."
    )


def _dataset_losses(keys: list[str], inputs: state.Inputs) -> None:
    """Training and validation loss on The Verdict, shared with the Dataset view's results."""
    st.subheader("Dataset losses (The Verdict, the book's loaders)", anchor=False)
    text = cache.verdict()
    rows, todo = [], []
    for key in keys:
        ctx = cache.get_spec(key)  # settings must fit the model's context (a quick model reads 64 tokens)
        try:
            model = cache.get_model(key, inputs.seed, inputs.device)
        except LossLensError as e:
            rows.append({"model": ctx.label, "note": str(e)})
            continue
        length = min(256, model.cfg["context_length"])
        settings = LoaderSettings(context_length=length, stride=length)
        skey = store.dataset_key(key, inputs.seed, text, settings, None, inputs.device)
        if (r := store.get(skey)) is not None:
            rows.append(
                {
                    "model": ctx.label,
                    "context length": length,
                    "training loss": r["train_loss"],
                    "validation loss": r["val_loss"],
                    "training perplexity": r["train_perplexity"],
                    "validation perplexity": r["val_perplexity"],
                }
            )
        else:
            todo.append((key, model, settings, skey))
            rows.append({"model": ctx.label, "context length": length, "note": "not computed yet"})
    if todo and st.button(
        f"Compute for {len(todo)} model(s)", icon=":material/calculate:", key="cmp_dataset"
    ):
        bar = st.progress(0.0)
        for n, (key, model, settings, skey) in enumerate(todo):
            bar.progress(n / len(todo), text=f"{cache.get_spec(key).label}…")
            store.put(skey, evaluate_dataset(model, text, settings, tokenizer=cache.tokenizer()).to_dict())
        st.rerun()
    st.dataframe(rows, hide_index=True)
    st.caption(
        "The validation loss is the honest one: a model trained on The Verdict has seen its training "
        "split, and a low training loss with a high validation loss is memorisation."
    )


def render(inputs: state.Inputs) -> None:
    lesson_nav.open_view("compare", inputs)
    st.caption(
        "The sidebar's texts through each model: the same six steps, side by side. An untrained model "
        "is near the uniform guess (ln 50257 ≈ 10.82); training lowers the loss on text like its corpus."
    )
    with errors.friendly_errors():
        models = available_models(visitor.owner())  # only this visitor's trained models
        keys = st.multiselect(
            "Models",
            list(models),
            default=_default(models),
            max_selections=MAX_MODELS,
            format_func=lambda k: models[k].label,
            key="cmp_models",
        )
        if not keys:
            st.info("Choose one or more models. Train one in the Training view.", icon=":material/info:")
            return
        pending = [k for k in keys if models[k].needs_download]
        if pending:
            st.caption(
                "Pretrained GPT-2 downloads once from the Hugging Face Hub (offline: a message says how "
                "to provide the file)."
            )
        res = _summaries(inputs, keys)
        ok = {k: v for k, v in res.items() if isinstance(v, dict)}
        for k, v in res.items():
            if isinstance(v, str):
                st.warning(f"{formats.md(models[k].label)}: {formats.md(v)}", icon=":material/warning:")
        if not ok:
            return
        cols = st.columns(len(ok))
        for col, (k, s) in zip(cols, ok.items(), strict=True):
            col.metric(models[k].label, formats.num(s["loss"]), help="cross entropy (loss)")
            col.caption(
                f"perplexity {formats.ppl(s['perplexity'])} · {s['bits_per_token']:.3f} bits per token"
            )
        _loss_chart(
            [models[k].label for k in ok],
            [formats.to_float(s["loss"]) for s in ok.values()],
            inputs.presentation,
        )
        note = lowest_note(
            [models[k].label for k in ok],
            [formats.to_float(s["loss"]) for s in ok.values()],
            [models[k].seeded for k in ok],
        )
        if note:
            st.markdown(note)

        st.subheader("Next-token predictions", anchor=False)
        first = next(iter(ok.values()))
        for row, text in enumerate(first["texts"]):
            st.markdown(f"**Text {row + 1}**")
            table = []
            for pos, p in enumerate(text["positions"]):
                line = {"input → target": f"{p['input']} → {p['target']}"}
                for k, s in ok.items():
                    q = s["texts"][row]["positions"][pos]
                    top = ", ".join(f"{t['piece']} {formats.proba(t['proba'])}" for t in q["top_k"])
                    line[models[k].label] = (
                        f"p(target) {formats.proba(q['target_proba'])} · rank {q['rank']} · top: {top}"
                    )
                table.append(line)
            st.dataframe(table, hide_index=True)  # a dataframe shows user text literally
        rows = [
            {"model": models[k].label, "key": k, "loss": s["loss"], "perplexity": s["perplexity"]}
            for k, s in ok.items()
        ]
        widgets.downloads(
            "compare", rows, {k: {"loss": s["loss"], "perplexity": s["perplexity"]} for k, s in ok.items()}
        )
        token_compare.section(inputs, list(ok), {k: models[k].label for k in ok})
        _dataset_losses(list(ok), inputs)


if __name__ == "__main__":  # run as a page of app.py's st.navigation
    render(state.current_inputs())
