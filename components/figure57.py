"""View 3: figure 5.7 step by step, on the user's own texts, with Previous / Next / Play."""

from __future__ import annotations

import math
import time

import plotly.graph_objects as go
import streamlit as st

from components import a11y, common, formats, lesson_nav, style, surprisal
from core.lessons.report import STEPS, step_code

PLAY_SECONDS = 5.0  # long enough to say a sentence about each step
EXPLAIN = [
    "The model scores every one of the 50,257 vocabulary tokens at every input position: "
    "unnormalized numbers (logits). The bars show the highest score and the one the actual next token got.",
    "Softmax turns each position's scores into probabilities that sum to 1 over the whole vocabulary. "
    "An untrained model spreads them almost evenly, close to 1/50,257.",
    "Of each position's 50,257 probabilities, only one matters for the loss: the one given to the token "
    "that actually comes next (the target). Training pushes these up towards 1.",
    "Logarithms turn the products of small probabilities into sums of manageable negative numbers: "
    "log 1 = 0 for a perfect prediction, more negative the less likely the target was.",
    "One number for the whole batch: the mean of the log probabilities of all targets, of all texts.",
    "Negate, so that lower is better and a perfect model scores 0: this is the cross-entropy loss, "
    "the number training minimizes. "
    "`torch.nn.functional.cross_entropy` computes it from the logits in one call.",
]


def _advance() -> None:
    """Play: move one step before the step widget exists in this run (Streamlit's rule)."""
    if st.session_state.get("playing") and st.session_state.get("_play_tick"):
        st.session_state._play_tick = False
        step = int(st.session_state.get("step", 1))
        if step < len(STEPS):
            st.session_state.step = step + 1
        if st.session_state.step >= len(STEPS):
            st.session_state.playing = False


def _go(delta: int) -> None:
    st.session_state.playing = False
    st.session_state.step = min(len(STEPS), max(1, int(st.session_state.get("step", 1)) + delta))


def _play() -> None:
    if st.session_state.get("playing"):
        st.session_state.playing = False
        return
    st.session_state.playing = True
    st.session_state._play_tick = False
    if int(st.session_state.get("step", 1)) >= len(STEPS):
        st.session_state.step = 1


def _positions(s: dict) -> list[tuple[str, dict]]:
    return [
        # Input and target on lines of their own: side by side, neighbouring labels ran together.
        (f"{common.esc(p['input'])} →<br>{common.esc(p['target'])}<br>{r + 1}·{p['position']}", p)
        for r, t in enumerate(s["texts"])
        for p in t["positions"]
    ]


def diagram(s: dict, step: int) -> str:
    b, t, v = s["shapes"]["logits"]
    n = s["num_tokens"]
    facts = [
        f"[{b}, {t}, {v:,}]",
        f"[{b}, {t}, {v:,}], rows sum to 1",
        f"{n} values, one per target",
        f"[{n}]",
        common.num(s["avg_log_probas"]),
        common.num(s["neg_avg_log_probas"]),
    ]
    parts = []
    # Only the steps reached so far: a later card would give the answer (the loss) away.
    for k, ((_, title, _), fact) in enumerate(zip(STEPS[:step], facts[:step], strict=True), 1):
        state = "now" if k == step else "done"
        current = ' aria-current="step"' if k == step else ""
        here = '<span class="ll-sr">, current step</span>' if k == step else ""
        parts.append(
            f'<li class="ll-step {state}"{current}><b>{k}. {common.esc(title)}</b>'
            f"<code>{common.esc(fact)}</code>{here}</li>"
        )
    # An ordered list: a screen reader hears "list, 6 items" and the steps in order.
    return '<ol class="ll-flow" aria-label="The six steps of figure 5.7">' + "".join(parts) + "</ol>"


def _uniform(fig: go.Figure, x: list[str], uniform: float) -> None:
    # A trace, not add_hline: its label stays right on a log axis too.
    fig.add_scatter(
        x=x,
        y=[uniform] * len(x),
        mode="lines",
        name=f"uniform 1/{round(1 / uniform):,}",
        line=dict(color="#666666", dash="dot"),
        hoverinfo="skip",
    )


def figure(s: dict, step: int) -> go.Figure:
    pos = _positions(s)
    x = [name for name, _ in pos]
    ps = [p for _, p in pos]
    uniform = 1 / s["vocab_size"]
    fig = go.Figure()
    if step == 1:
        fig.add_bar(
            x=x, y=[p["top_k"][0]["logit"] for p in ps], name="highest logit", marker_color=common.NEUTRAL
        )
        fig.add_bar(x=x, y=[p["target_logit"] for p in ps], name="target's logit", marker_color=common.ACCENT)
        fig.update_yaxes(title="logit (unnormalized score)")
    elif step == 2:
        fig.add_bar(
            x=x,
            y=[p["top_k"][0]["proba"] for p in ps],
            name="highest probability",
            marker_color=common.NEUTRAL,
        )
        fig.add_bar(
            x=x,
            y=[common.to_float(p["target_proba"]) for p in ps],
            name="target's probability",
            marker_color=common.ACCENT,
        )
        _uniform(fig, x, uniform)
        fig.update_yaxes(title="probability", **formats.LINEAR_PROBA_AXIS)
    elif step == 3:
        fig.add_bar(
            x=x,
            y=[common.to_float(p["target_proba"]) for p in ps],
            name="target_probas",
            marker_color=common.ACCENT,
            text=formats.distinct([common.to_float(p["target_proba"]) for p in ps]),
            textposition="auto",
        )
        _uniform(fig, x, uniform)
        values = [v for v in (common.to_float(p["target_proba"]) for p in ps) if v > 0] + [uniform]
        lo, hi = math.log10(min(values)), math.log10(max(values))
        fig.update_yaxes(
            title="target probability (log scale)",
            **formats.LOG_PROBA_AXIS,
            range=[math.floor(lo - 0.3), math.ceil(hi + 0.3)],
        )
    else:
        _log_bars(fig, s, x, step)
    fig.update_xaxes(tickangle=0, title="input → target (text·position)")
    # The legend above the plot: below it, it ran into the x-axis title.
    fig.update_layout(
        barmode="group",
        height=420,
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0),
        title=dict(text=STEPS[step - 1][1], y=0.98, yanchor="top"),
        margin=dict(t=90),
    )
    return fig


def _log_bars(fig: go.Figure, s: dict, x: list[str], step: int) -> None:
    """Steps 4-6. A log probability of −∞ (a probability rounded to 0) is no bar of height 0:
    it is drawn as a hatched bar past the largest finite one, labelled −∞ (∞ once negated)."""
    sign = -1 if step == 6 else 1
    logs = [sign * common.to_float(v) for v in s["log_probas"]]
    finite = [abs(v) for v in logs if math.isfinite(v)]
    cap = 1.25 * max(finite, default=1.0)
    inf = [not math.isfinite(v) for v in logs]
    fig.add_bar(
        x=x,
        y=[math.copysign(cap, v) if i else v for v, i in zip(logs, inf, strict=True)],
        text=[common.num(v, 2) for v in logs],
        textposition="inside",
        insidetextanchor="middle",
        name="-log_probas" if step == 6 else "log_probas",
        marker_color=common.VIRIDIS[3] if step == 4 else "rgba(49,104,142,.45)",
        marker_pattern_shape=["/" if i else "" for i in inf],
    )
    if step >= 5:
        level = common.to_float(s["neg_avg_log_probas"] if step == 6 else s["avg_log_probas"])
        name = "loss by hand (naive)" if step == 6 else "mean"
        if math.isfinite(level):
            fig.add_hline(
                y=level,
                line_color=common.ACCENT,
                line_width=4,
                annotation_text=f"{name} = {common.num(level)}",
                annotation_position="top left",
                annotation_font_color=common.ACCENT_TEXT,
            )
        else:  # no line at infinity (Plotly would draw it slanted near 0): say it in words
            fig.add_annotation(
                text=f"{name} = {formats.nats(level)}: a probability rounded to 0 has log −∞",
                xref="paper",
                yref="paper",
                x=0.01,
                y=0.97,
                xanchor="left",
                yanchor="top",
                showarrow=False,
                font=dict(color=common.ACCENT_TEXT),
            )
        if step == 6 and isinstance(s["loss"], float) and math.isfinite(s["loss"]) and any(inf):
            fig.add_hline(
                y=s["loss"],
                line_color=common.NEUTRAL,
                line_width=3,
                line_dash="dash",
                annotation_text=f"F.cross_entropy (stable) = {common.num(s['loss'])}",
                annotation_position="bottom right",
            )
    fig.update_yaxes(title="−log probability (nats)" if step == 6 else "log probability (nats)")


def _e(x) -> str:
    return formats.proba(x)


def _values(s: dict, step: int) -> tuple[str, list[dict]]:
    """The step's tensor printed as the book prints it, and a table of its values."""
    rows = []
    for r, t in enumerate(s["texts"]):
        for p in t["positions"]:
            rows.append(
                {
                    "text": r + 1,
                    "position": p["position"],
                    "input": p["input"],
                    "target": p["target"],
                    "target_id": p["target_id"],
                    "target_logit": p["target_logit"],
                    "highest_logit": p["top_k"][0]["logit"],
                    "target_proba": p["target_proba"],
                    "log_proba": p["log_proba"],
                }
            )
    fmt = lambda v: common.num(v, 4)  # noqa: E731
    if step == 1:
        shape = s["shapes"]["logits"]
        text = f"logits.shape = torch.Size({shape})\n" + "\n".join(
            f"logits[{r['text'] - 1}, {r['position']}, {r['target_id']}] = {r['target_logit']:.4f}   "
            f"# target {r['target']}"
            for r in rows
        )
    elif step == 2:
        text = "\n".join(
            f"probas[{r['text'] - 1}, {r['position']}, {r['target_id']}] = {common.proba(r['target_proba'])}"
            for r in rows
        )
    elif step == 3:
        text = "\n".join(
            f"target_probas_{i + 1}: tensor([{', '.join(_e(p['target_proba']) for p in t['positions'])}])"
            for i, t in enumerate(s["texts"])
        )
    elif step == 4:
        text = f"log_probas: tensor([{', '.join(fmt(v) for v in s['log_probas'])}])"
    elif step == 5:
        text = (
            f"torch.mean(tensor([{', '.join(fmt(v) for v in s['log_probas'])}]))\n"
            f"avg_log_probas: tensor({fmt(s['avg_log_probas'])})"
        )
    else:
        text = (
            f"-({' + '.join(fmt(v) for v in s['log_probas'])}) / {len(s['log_probas'])}\n"
            f"neg_avg_log_probas: tensor({fmt(s['neg_avg_log_probas'])})"
        )
    return text, rows


def render(inputs: common.Inputs) -> None:
    lesson_nav.open_view("figure-5-7", inputs)
    with common.friendly_errors():
        s = common.summary(inputs)
        if not inputs.presentation:
            common.metrics(s)
        _advance()
        left, right = st.columns([2, 3], vertical_alignment="bottom")
        step = left.select_slider(
            "Step", options=list(range(1, len(STEPS) + 1)), key="step", bind="query-params"
        )
        playing = bool(st.session_state.get("playing"))
        with right.container(horizontal=True):
            # PageUp / PageDown: what a presentation clicker sends.
            # Fixed keys: a button keeps its identity (and the keyboard focus) when its label
            # or state changes.
            st.button(
                "Previous",
                on_click=_go,
                args=(-1,),
                disabled=step <= 1,
                icon=":material/arrow_back:",
                shortcut="PageUp",
                key="step_previous",
            )
            st.button(
                "Next",
                on_click=_go,
                args=(1,),
                disabled=step >= len(STEPS),
                icon=":material/arrow_forward:",
                shortcut="PageDown",
                key="step_next",
            )
            st.button(
                "Pause" if playing else "Play",
                on_click=_play,
                icon=":material/pause:" if playing else ":material/play_arrow:",
                shortcut="P",
                key="step_play",
                help=f"One step every {PLAY_SECONDS:g} s",
            )

        style.html_block(diagram(s, step))
        key, title, _ = STEPS[step - 1]
        description = a11y.describe_step(s, step)
        a11y.announce(f"Step {step} of {len(STEPS)}: {title}. {description}")
        # Code and words beside the chart: on a projector the chart starts on the first screen.
        code_col, chart_col = st.columns([2, 3])
        with code_col:
            st.subheader(f"Step {step} of {len(STEPS)}: {title}", anchor=False)
            st.code(step_code(s, step), language="python")
            st.markdown(EXPLAIN[step - 1])
            if step == len(STEPS):
                c1, c2 = st.columns(2)
                c1.metric("neg_avg_log_probas (by hand, naive)", common.num(s["neg_avg_log_probas"]))
                c2.metric(
                    "F.cross_entropy (stable)",
                    common.num(s["loss"]),
                    help="torch.nn.functional.cross_entropy: log-sum-exp on the logits, never log(0)",
                )
        with chart_col:
            common.chart(figure(s, step), f"figure-5-7-step{step}-{key}", inputs.presentation, description)
        text, rows = _values(s, step)
        st.code(text, language="text")
        if step >= 4:
            surprisal.section(s, inputs.presentation, f"figure-5-7-step{step}-surprisal")
        if not inputs.presentation:
            with st.expander("All values of this batch"):
                st.dataframe(rows, hide_index=True)
            common.downloads(
                "figure-5-7",
                rows,
                {
                    "steps": [[k, t, step_code(s, n)] for n, (k, t, _) in enumerate(STEPS, 1)],
                    **{
                        k: s[k]
                        for k in (
                            "log_probas",
                            "avg_log_probas",
                            "neg_avg_log_probas",
                            "loss",
                            "perplexity",
                            "shapes",
                        )
                    },
                    "positions": rows,
                },
            )
        lesson_nav.try_this("figure-5-7")
    lesson_nav.footer("figure-5-7")

    if st.session_state.get("playing"):
        time.sleep(PLAY_SECONDS)
        st.session_state._play_tick = True
        st.rerun()


if __name__ == "__main__":  # run as a page of app.py's st.navigation
    render(common.current_inputs())
