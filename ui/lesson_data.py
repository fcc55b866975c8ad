"""Cached calls into core for the lesson views (sweep, units, confidence, gradient).

Each runs the model once on the sidebar's texts and keeps only small, per-position results:
the logits never leave the function, and nothing full-vocabulary reaches the browser.
"""

from __future__ import annotations

import streamlit as st

from core.lessons.confidence import confidence
from core.lessons.gradient import gradient_bars
from core.lessons.sweep import temperature_sweep
from core.lessons.tokens import token_piece
from core.lessons.units import loss_units
from core.lessons.views import forward, predictions
from ui import cache, state


def model_args(inputs: state.Inputs) -> tuple[str, int, str]:
    """(model key, seed, device) as the caches see them: the seed only matters for untrained models."""
    return inputs.model, inputs.seed if cache.get_spec(inputs.model).seeded else 0, inputs.device


def _forward(key: str, seed: int, device: str, texts: tuple[str, ...]):
    batch, logits = forward(cache.get_model(key, seed, device), list(texts), cache.tokenizer())
    return batch, *predictions(logits, batch)


def _labels(batch) -> list[dict]:
    """Text, position, input and target piece of each prediction, in the order of predictions()."""
    tk = cache.tokenizer()
    out = []
    for row, ids in enumerate(batch.token_ids):
        shown = [token_piece(i, tk).display for i in ids]
        out += [
            {
                "text": row + 1,
                "position": t,
                "input": shown[t],
                "target": shown[t + 1],
                "target_id": ids[t + 1],
            }
            for t in range(len(ids) - 1)
        ]
    return out


@st.cache_data(max_entries=64, ttl=3600, show_spinner=False)
def sweep(key: str, seed: int, device: str, texts: tuple[str, ...], temperature: float) -> dict:
    _, z, y = _forward(key, seed, device, texts)
    return temperature_sweep(z, y, current=temperature).to_dict()


@st.cache_data(max_entries=64, ttl=3600, show_spinner=False)
def units(key: str, seed: int, device: str, texts: tuple[str, ...], temperature: float) -> dict:
    batch, z, y = _forward(key, seed, device, texts)
    c = confidence(z, y, temperature)  # surprisal per prediction, in the order of the texts
    per_text, start = [], 0
    for ids in batch.token_ids:
        per_text.append(c["surprisal"][start : start + len(ids) - 1])
        start += len(ids) - 1
    return loss_units(batch.texts, batch.token_ids, per_text, cache.tokenizer())


@st.cache_data(max_entries=64, ttl=3600, show_spinner=False)
def confidence_rows(key: str, seed: int, device: str, texts: tuple[str, ...], temperature: float) -> dict:
    batch, z, y = _forward(key, seed, device, texts)
    c = confidence(z, y, temperature)
    rows = [
        {
            **label,
            "entropy": c["entropy"][n],
            "surprisal": c["surprisal"][n],
            "rank": c["rank"][n],
            "bucket": c["bucket_names"][c["bucket"][n]],
            "bucket_index": c["bucket"][n],
            "top_proba": c["top_proba"][n],
        }
        for n, label in enumerate(_labels(batch))
    ]
    return {
        "rows": rows,
        "histogram": c["histogram"],
        "bucket_names": c["bucket_names"],
        "first_tokens": [token_piece(ids[0], cache.tokenizer()).display for ids in batch.token_ids],
    }


@st.cache_data(max_entries=64, ttl=3600, show_spinner=False)
def gradients(key: str, seed: int, device: str, texts: tuple[str, ...], top_k: int) -> dict:
    """The logit gradient's top-k and target bars at every prediction (temperature 1: training's)."""
    batch, z, y = _forward(key, seed, device, texts)
    tk = cache.tokenizer()
    labels = _labels(batch)
    for label, bars in zip(labels, gradient_bars(z, y, top_k), strict=True):
        label.update(bars, pieces=[token_piece(i, tk).display for i in bars["ids"]])
    return {"positions": labels, "num_predictions": len(labels)}
