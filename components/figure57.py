"""View 3: figure 5.7 step by step, on the user's own texts, with Previous / Next / Play."""

from __future__ import annotations

import os
import time

import streamlit as st

from core.lessons.report import STEPS, step_code
from ui import a11y, cache, charts, errors, formats, lesson_nav, state, style, surprisal, widgets


def _play_seconds() -> float:
    """Play's pace: 5 s, long enough to say a sentence about each step; LOSSLENS_PLAY_SECONDS sets
    another (1 to 60 s; anything else keeps 5)."""
    try:
        seconds = float(os.environ.get("LOSSLENS_PLAY_SECONDS", "5"))
    except ValueError:
        return 5.0
    return seconds if 1 <= seconds <= 60 else 5.0


PLAY_SECONDS = _play_seconds()
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


def diagram(s: dict, step: int) -> str:
    b, t, v = s["shapes"]["logits"]
    n = s["num_tokens"]
    facts = [
        f"[{b}, {t}, {v:,}]",
        f"[{b}, {t}, {v:,}], rows sum to 1",
        f"{n} values, one per target",
        f"[{n}]",
        formats.num(s["avg_log_probas"]),
        formats.num(s["neg_avg_log_probas"]),
    ]
    parts = []
    # Only the steps reached so far: a later card would give the answer (the loss) away.
    for k, ((_, title, _), fact) in enumerate(zip(STEPS[:step], facts[:step], strict=True), 1):
        done = "now" if k == step else "done"
        current = ' aria-current="step"' if k == step else ""
        here = '<span class="ll-sr">, current step</span>' if k == step else ""
        parts.append(
            f'<li class="ll-step {done}"{current}><b>{k}. {formats.esc(title)}</b>'
            f"<code>{formats.esc(fact)}</code>{here}</li>"
        )
    # An ordered list: a screen reader hears "list, 6 items" and the steps in order.
    return '<ol class="ll-flow" aria-label="The six steps of figure 5.7">' + "".join(parts) + "</ol>"


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
    fmt = lambda v: formats.num(v, 4)  # noqa: E731
    if step == 1:
        shape = s["shapes"]["logits"]
        text = f"logits.shape = torch.Size({shape})\n" + "\n".join(
            f"logits[{r['text'] - 1}, {r['position']}, {r['target_id']}] = {r['target_logit']:.4f}   "
            f"# target {r['target']}"
            for r in rows
        )
    elif step == 2:
        text = "\n".join(
            f"probas[{r['text'] - 1}, {r['position']}, {r['target_id']}] = {formats.proba(r['target_proba'])}"
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


def render(inputs: state.Inputs) -> None:
    lesson_nav.open_view("figure-5-7", inputs)
    with errors.friendly_errors():
        s = cache.summary(inputs)
        if not inputs.presentation:
            widgets.metrics(s)
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
                c1.metric("neg_avg_log_probas (by hand, naive)", formats.num(s["neg_avg_log_probas"]))
                c2.metric(
                    "F.cross_entropy (stable)",
                    formats.num(s["loss"]),
                    help="torch.nn.functional.cross_entropy: log-sum-exp on the logits, never log(0)",
                )
        with chart_col:
            charts.chart(
                charts.step_figure(s, step), f"figure-5-7-step{step}-{key}", inputs.presentation, description
            )
        text, rows = _values(s, step)
        st.code(text, language="text")
        if step >= 4:
            surprisal.section(s, inputs.presentation, f"figure-5-7-step{step}-surprisal")
        if not inputs.presentation:
            with st.expander("All values of this batch"):
                st.dataframe(rows, hide_index=True)
            widgets.downloads(
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
    render(state.current_inputs())
