"""View 5: the text coloured by each token's surprisal; hover for probability, rank, alternatives."""

from __future__ import annotations

import streamlit as st

from ui import a11y, cache, errors, formats, lesson_nav, state, style, widgets
from ui.formats import esc


def _colour(x: float, lo: float, hi: float) -> tuple[str, str]:
    """Viridis background and a text colour that stays readable on it."""
    f = 0.0 if hi <= lo else min(1.0, max(0.0, (x - lo) / (hi - lo)))
    i = round(f * (len(style.VIRIDIS) - 1))
    # Black from index 4 (#26828e: 4.7:1 with black, 4.5:1 with white): at least 4.5:1 on every colour.
    return style.VIRIDIS[i], ("#000000" if i >= 4 else "#ffffff")


def heat(t: dict, lo: float, hi: float, row: int = 0) -> str:
    """The text as tokens on their surprisal colour. Each token is focusable and named with its
    text, id and values (role img + aria-label), and shows the same details on hover and on focus."""
    first = t["tokens"][0]
    first_tip = f"{first} (id {t['token_ids'][0]}): the first token, nothing predicts it"
    out = [
        f'<span class="tok" style="background:transparent;border:1px dashed #767676" role="img" tabindex="0" '
        f'aria-label="{esc(first_tip)}" data-tip="{esc(first_tip)}">{esc(first)}</span>'
    ]
    for p in t["positions"]:
        x = formats.to_float(p["surprisal"])
        bg, fg = _colour(x, lo, hi)
        alts = ", ".join(f"{c['piece']} {formats.proba(c['proba'])}" for c in p["top_k"][:5])
        tip = (
            f"{p['target']} (id {p['target_id']})\n"
            f"surprisal {formats.num(p['surprisal'], 3)} nats\n"
            f"probability {formats.proba(p['target_proba'])}\n"
            f"rank {p['rank']:,}\n"
            f"top alternatives: {alts}"
        )
        name = tip.replace("\n", ", ")
        out.append(
            f'<span class="tok" style="--heat:{bg};background:{bg};color:{fg}" role="img" tabindex="0" '
            f'aria-label="{esc(name)}" data-tip="{esc(tip)}">{esc(p["target"])}</span>'
        )
    label = f"Text {row + 1} coloured by surprisal; each token is focusable and names its values"
    return f'<div class="ll-heat" role="group" aria-label="{label}">' + "".join(out) + "</div>"


def render(inputs: state.Inputs) -> None:
    lesson_nav.open_view("per-token-loss", inputs)
    with errors.friendly_errors():
        s = cache.summary(inputs)
        widgets.metrics(s)
        values = [formats.to_float(p["surprisal"]) for t in s["texts"] for p in t["positions"]]
        finite = [x for x in values if x == x and x != float("inf")]
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
        st.caption(
            "Each token coloured by its surprisal −log p(token | the tokens before it), in nats: the "
            "term it adds to the loss, which is their average. Hover or Tab to a token for its probability, "
            "rank and the model's top alternatives."
        )
        style.html_block(
            f'<div class="ll-legend"><span>{lo:.2f} nats (expected)</span><span class="bar"></span>'
            f"<span>{hi:.2f} nats (surprising)</span></div>"
        )
        rows = []
        for r, t in enumerate(s["texts"]):
            st.markdown(f"**Text {r + 1}**")
            style.html_block(heat(t, lo, hi, r))
            st.caption(formats.md(a11y.describe_heat(t, r)))
            for p in t["positions"]:
                rows.append(
                    {
                        "text": r + 1,
                        "position": p["position"],
                        "token": p["target"],
                        "token_id": p["target_id"],
                        "surprisal": p["surprisal"],
                        "probability": p["target_proba"],
                        "rank": p["rank"],
                        "top1": p["top_k"][0]["piece"],
                    }
                )
        st.subheader("Most surprising tokens", anchor=False)
        st.dataframe(
            sorted(rows, key=lambda r: -formats.to_float(r["surprisal"])),
            hide_index=True,
            column_config={
                "surprisal": st.column_config.ProgressColumn(
                    "surprisal (nats)", format="%.3f", min_value=0.0, max_value=max(hi, 1e-9)
                ),
                "probability": st.column_config.NumberColumn(format="%.4e"),
            },
        )
        widgets.downloads("per-token-loss", rows)


if __name__ == "__main__":  # run as a page of app.py's st.navigation
    render(state.current_inputs())
