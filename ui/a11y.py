"""Text alternatives: each chart's lesson as one sentence, its values as a table, and short
announcements for screen readers. The describe_* functions only format numbers that core
computed (summary dicts from core.lessons.report), so they are unit-tested without Streamlit."""

from __future__ import annotations

import html
import math

import streamlit as st

from ui import formats, style

MAX_TABLE_ROWS = 500  # a chart with more points keeps its values in the CSV download


def p3(x) -> str:
    """A probability as everywhere in the app: the book's 7.4541e-05 (ui/formats.py)."""
    return formats.proba(x)


def value(x) -> str:
    """A chart value for the table: 4 decimals for ordinary sizes, else scientific."""
    if x is None or isinstance(x, str):
        return formats.num(x)
    if isinstance(x, int):
        return f"{x:,}"
    x = float(x)
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e6) and math.isfinite(x):
        return f"{x:.4e}"
    return f"{x:.4f}"


def _pairs(s: dict) -> list[tuple[str, dict]]:
    return [(f"{p['input']} → {p['target']}", p) for t in s["texts"] for p in t["positions"]]


def _extremes(items: list[tuple[str, float]]) -> tuple[tuple[str, float], tuple[str, float]]:
    lo = min(items, key=lambda kv: kv[1])
    hi = max(items, key=lambda kv: kv[1])
    return lo, hi


def describe_prediction(p: dict, vocab_size: int) -> str:
    """One position of the probabilities chart: the target against the model's favourite."""
    top = p["top_k"][0]
    head = (
        f"After {p['input']}, target {p['target']} has probability {p3(p['target_proba'])}, "
        f"rank {p['rank']:,} of {vocab_size:,}"
    )
    if top["id"] == p["target_id"]:
        return head + ": it is the model's top token."
    return head + f"; the top token {top['piece']} has {p3(top['proba'])}."


def describe_step(s: dict, step: int) -> str:
    """Figure 5.7's step `step` (1..6) as a sentence with its values."""
    pairs = _pairs(s)
    n = len(pairs)
    v = s["vocab_size"]
    if step == 1:
        (tl, tlv), (th, thv) = _extremes([(k, p["target_logit"]) for k, p in pairs])
        (_, hl), (_, hh) = _extremes([(k, p["top_k"][0]["logit"]) for k, p in pairs])
        return (
            f"{n} positions, {v:,} logits each. "
            f"The target's logit ranges from {tlv:.4f} ({tl}) to {thv:.4f} ({th}); "
            f"the highest logit of each position from {hl:.4f} to {hh:.4f}."
        )
    if step == 2:
        (_, tl), (_, th) = _extremes([(k, formats.to_float(p["target_proba"])) for k, p in pairs])
        (_, hl), (_, hh) = _extremes([(k, p["top_k"][0]["proba"]) for k, p in pairs])
        return (
            f"Softmax: each position's {v:,} probabilities sum to 1. "
            f"The targets get from {p3(tl)} to {p3(th)}, "
            f"the most likely token of each position from {p3(hl)} to {p3(hh)}; uniform would be {p3(1 / v)}."
        )
    if step == 3:
        (kl, tl), (kh, th) = _extremes([(k, formats.to_float(p["target_proba"])) for k, p in pairs])
        return (
            f"target_probas: {n} values, from {p3(tl)} ({kl}) to {p3(th)} ({kh}); "
            f"the uniform guess 1/{v:,} is {p3(1 / v)}."
        )
    if step == 4:
        logs = [(k, formats.to_float(x)) for (k, _), x in zip(pairs, s["log_probas"], strict=True)]
        (kl, ll), (kh, lh) = _extremes(logs)
        return (
            f"log_probas: {n} values, from {formats.num(ll)} ({kl}) to {formats.num(lh)} ({kh}); "
            "0 would be a perfect prediction."
        )
    if step == 5:
        return f"avg_log_probas, the mean of the {n} log probabilities: {formats.num(s['avg_log_probas'])}."
    return (
        f"neg_avg_log_probas = {formats.num(s['neg_avg_log_probas'])}, the cross-entropy loss; "
        f"torch.nn.functional.cross_entropy gives {formats.num(s['loss'])}."
    )


def describe_heat(t: dict, row: int) -> str:
    """One text of the per-token heatmap: its most and least surprising tokens."""
    items = [(p["target"], formats.to_float(p["surprisal"])) for p in t["positions"]]
    if not items:
        return f"Text {row + 1}: no token to predict."
    (kl, lo), (kh, hi) = _extremes(items)
    return (
        f"Text {row + 1}, {len(items)} predicted tokens: most surprising {kh} ({formats.num(hi, 2)} nats), "
        f"least surprising {kl} ({formats.num(lo, 2)} nats)."
    )


def _series(name: str, losses: list[float], mean) -> str:
    if not losses:
        return f"{name}: no batch."
    return (
        f"{name} loss {formats.num(mean)}, "
        f"the mean of {len(losses):,} batch{'es' if len(losses) != 1 else ''} "
        f"(lowest {min(losses):.4f}, highest {max(losses):.4f})"
    )


def describe_dataset(r: dict) -> str:
    return (
        _series("Training", r["train_batch_losses"], r["train_loss"])
        + "; "
        + _series("validation", r["val_batch_losses"], r["val_loss"])
        + "."
    )


def describe_training(evals: list[dict]) -> str:
    last = evals[-1]
    text = (
        f"At step {last['step']:,} ({last['tokens_seen']:,} tokens seen): "
        f"training loss {last['train_loss']:.3f}, "
        f"validation loss {last['val_loss']:.3f}"
    )
    if len(evals) > 1:
        first = evals[0]
        text += (
            f"; at the first evaluation (step {first['step']:,}) they were {first['train_loss']:.3f} "
            f"and {first['val_loss']:.3f}"
        )
    return text + "."


def describe_losses(labels: list[str], losses: list[float]) -> str:
    """The comparison chart: each model's loss on the sidebar's texts, and the lowest."""
    parts = "; ".join(f"{name} {value(x)}" for name, x in zip(labels, losses, strict=True))
    best = labels[min(range(len(losses)), key=lambda i: losses[i])]
    return f"Loss on the sidebar's texts: {parts}." + (f" Lowest: {best}." if len(labels) > 1 else "")


def loss_announcement(s: dict) -> str:
    return (
        f"Loss {formats.num(s['loss'])}, perplexity {formats.ppl(s['perplexity'])}, "
        f"over {s['num_tokens']:,} predicted tokens."
    )


# --- a chart's values as a table ---------------------------------------------------------


def _label(x) -> str:
    """A Plotly category label back to plain text (labels are HTML-escaped for Plotly)."""
    return html.unescape(str(x).replace("<br>", " · "))


def figure_rows(fig) -> tuple[str, list[str], list[list[str]]]:
    """The values drawn by a Plotly figure: one row per category (or x), one column per trace."""
    columns: list[str] = []
    rows: dict[str, dict[str, str]] = {}
    axis_name = "x"
    for trace in fig.data:
        x, y = getattr(trace, "x", None), getattr(trace, "y", None)
        if x is None or y is None:
            continue
        horizontal = getattr(trace, "orientation", None) == "h"
        keys, values = (y, x) if horizontal else (x, y)
        name = trace.name or f"series {len(columns) + 1}"
        columns.append(name)
        for k, val in zip(keys, values, strict=False):
            rows.setdefault(_label(k) if isinstance(k, str) else value(k), {})[name] = value(val)
    xaxis = (
        fig.layout.yaxis
        if any(getattr(t, "orientation", None) == "h" for t in fig.data)
        else fig.layout.xaxis
    )
    if xaxis.title and xaxis.title.text:
        axis_name = _label(xaxis.title.text)
    body = [[k] + [r.get(c, "") for c in columns] for k, r in rows.items()]
    return axis_name, columns, body


def table_html(caption: str, head: list[str], body: list[list[str]]) -> str:
    """An accessible HTML table (caption, column headers, row headers); every cell escaped."""
    e = formats.esc
    th = "".join(f'<th scope="col">{e(h)}</th>' for h in head)
    tr = "".join(
        "<tr>" + f'<th scope="row">{e(r[0])}</th>' + "".join(f"<td>{e(c)}</td>" for c in r[1:]) + "</tr>"
        for r in body[:MAX_TABLE_ROWS]
    )
    more = (
        f"<p>First {MAX_TABLE_ROWS} of {len(body):,} rows; the CSV download has all.</p>"
        if len(body) > MAX_TABLE_ROWS
        else ""
    )
    # A wide table scrolls on its own; the scrolling box is focusable so the keyboard can scroll it.
    return (
        f'<div class="ll-tablewrap" tabindex="0" role="region" aria-label="{e(caption)} (table)">'
        f'<table class="ll-table"><caption>{e(caption)}</caption><thead><tr>{th}</tr></thead>'
        f"<tbody>{tr}</tbody></table></div>{more}"
    )


def chart_alternative(fig, description: str = "") -> None:
    """Under a chart: its lesson in a sentence, and its values one keystroke away (an expander)."""
    title = _label(fig.layout.title.text) if fig.layout.title and fig.layout.title.text else "Chart"
    if description:
        st.caption(formats.md(description))
    axis, columns, body = figure_rows(fig)
    if body:
        with st.expander(f"Chart values as a table: {title}"):
            style.html_block(table_html(title, [axis, *columns], body))


def announce(text: str) -> None:
    """A polite live region: screen readers read this short text when it changes, not the page."""
    style.html_block(
        f'<div class="ll-sr" role="status" aria-live="polite" aria-atomic="true">{formats.esc(text)}</div>'
    )
