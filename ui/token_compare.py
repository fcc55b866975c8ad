"""Compare view section: two models token by token (surprisal difference and KL per position)."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from core.lessons.divergence import compare_models
from core.lessons.tokens import token_piece
from ui import cache, charts, formats, state, style, widgets

# ColorBrewer PuOr (colour-blind safe, diverging): orange = A more surprised, purple = B more surprised.
PUOR = ["#b35806", "#f1a340", "#fee0b6", "#f7f7f7", "#d8daeb", "#998ec3", "#542788"]
TOP = 10


def _seed(key: str, seed: int) -> int:
    return seed if cache.get_spec(key).seeded else 0


@st.cache_data(max_entries=32, ttl=3600, show_spinner=False)
def token_rows(a: str, seed_a: int, b: str, seed_b: int, texts: tuple[str, ...], device: str = "cpu") -> dict:
    r = compare_models(
        cache.get_model(a, seed_a, device),
        cache.get_model(b, seed_b, device),
        list(texts),
        cache.tokenizer(),
    )
    tk = cache.tokenizer()
    rows, n = [], 0
    for row, ids in enumerate(r["token_ids"]):
        shown = [token_piece(i, tk).display for i in ids]
        for t in range(len(ids) - 1):
            rows.append(
                {
                    "text": row + 1,
                    "position": t,
                    "input": shown[t],
                    "target": shown[t + 1],
                    "surprisal_a": r["surprisal_a"][n],
                    "surprisal_b": r["surprisal_b"][n],
                    "difference": r["difference"][n],
                    "kl": r["kl"][n],
                }
            )
            n += 1
    return {"rows": rows, "first_tokens": [token_piece(ids[0], tk).display for ids in r["token_ids"]]}


def _colour(d: float, scale: float) -> tuple[str, str]:
    f = max(-1.0, min(1.0, d / scale)) if scale > 0 else 0.0
    i = round((1 - f) / 2 * (len(PUOR) - 1))  # +scale -> 0 (orange), -scale -> 6 (purple)
    return PUOR[i], "#ffffff" if i in (0, 6) else "#000000"


def heat(c: dict) -> str:
    scale = max([abs(r["difference"]) for r in c["rows"]] + [1e-9])
    out, row = [], 0
    for r in c["rows"]:
        if r["text"] != row:
            row = r["text"]
            out.append(
                ("<br>" if out else "")
                + f'<span style="border:1px dashed #999">{formats.esc(c["first_tokens"][row - 1])}</span>'
            )
        bg, fg = _colour(r["difference"], scale)
        tip = (
            f"surprisal A {r['surprisal_a']:.3f}, B {r['surprisal_b']:.3f} nats; "
            f"A − B {r['difference']:+.3f}; "
            f"KL(p_A‖p_B) {r['kl']:.4f} nats"
        )
        out.append(
            f'<span style="background:{bg};color:{fg}" title="{formats.esc(tip)}">'
            f"{formats.esc(r['target'])}</span>"
        )
    return '<div class="ll-heat">' + "".join(out) + "</div>"


def section(inputs: state.Inputs, keys: list[str], labels: dict[str, str]) -> None:
    st.subheader("Two models, token by token", anchor=False)
    if len(keys) < 2:
        st.info("Choose two models above to compare them token by token.", icon=":material/info:")
        return
    c1, c2 = st.columns(2)
    a = c1.selectbox("Model A", keys, index=0, format_func=labels.get, key="tok_a", bind="query-params")
    b = c2.selectbox("Model B", keys, index=1, format_func=labels.get, key="tok_b", bind="query-params")
    c = token_rows(a, _seed(a, inputs.seed), b, _seed(b, inputs.seed), inputs.texts, inputs.device)
    rows = c["rows"]
    m1, m2, m3 = st.columns(3)
    m1.metric(
        "Mean KL(p_A ‖ p_B)", formats.num(sum(r["kl"] for r in rows) / len(rows)), help="nats per position"
    )
    m2.metric(
        "Loss A − loss B",
        f"{sum(r['difference'] for r in rows) / len(rows):+.4f}",
        help="the mean surprisal difference: the difference of the two losses",
    )
    m3.metric("Largest KL at", formats.md(max(rows, key=lambda r: r["kl"])["target"]))
    st.caption(
        "Each token coloured by surprisal A − B: orange where A was more surprised, purple where B was "
        "(ColorBrewer PuOr, colour-blind safe). Hover for both surprisals and the KL divergence."
    )
    style.html_block(heat(c))
    fig = go.Figure(
        go.Bar(
            x=list(range(len(rows))),
            y=[r["kl"] for r in rows],
            marker_color=style.VIRIDIS[3],
            customdata=[
                f"text {r['text']}, position {r['position']}: {formats.esc(r['input'])} → "
                f"{formats.esc(r['target'])}"
                for r in rows
            ],
            hovertemplate="%{customdata}<br>KL %{y:.4f} nats<extra></extra>",
        )
    )
    fig.update_xaxes(title="prediction (texts one after the other)")
    fig.update_yaxes(title="KL(p_A ‖ p_B), nats")
    fig.update_layout(height=320, title="How differently the two models predict, per position")
    charts.chart(fig, "compare-kl", inputs.presentation)
    st.markdown(f"**Where they disagree most** (top {min(TOP, len(rows))} by KL)")
    st.dataframe(sorted(rows, key=lambda r: -r["kl"])[:TOP], hide_index=True)
    widgets.downloads(
        "compare-tokens", rows, {"model_a": a, "model_b": b, "predictions": rows}, key="cmp-tokens"
    )
