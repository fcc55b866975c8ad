"""`python -m core loss`: the six steps of figure 5.7 and the loss of one or more texts, as tables or JSON."""

from __future__ import annotations

import json
import sys

from core.cli.options import add_model_options, load
from core.lessons.report import format_perplexity


def _fmt(x) -> str:
    return "—" if x is None else (x if isinstance(x, str) else f"{x:.4f}" if abs(x) >= 1e-3 else f"{x:.4e}")


def _fmt_e(x) -> str:
    return x if isinstance(x, str) else f"{x:.2e}"


def add_loss(sub) -> None:
    p = sub.add_parser("loss", help="the six steps of figure 5.7 and the loss for one or more texts")
    p.add_argument("texts", nargs="+", metavar="TEXT", help="one text per batch row")
    p.add_argument("--top-k", type=int, default=5, help="next tokens listed per position (1..50257)")
    p.add_argument(
        "--temperature", type=float, default=1.0, help="divides the logits before every step (> 0)"
    )
    p.add_argument("--seed", type=int, default=123, help="seed of the untrained model (book: 123)")
    add_model_options(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=cmd_loss)


def cmd_loss(args) -> int:
    # Lazy imports in each command: a command loads only the modules it uses.
    from core.book.model import GPT_CONFIG_124M
    from core.lessons.loss import compute_loss, validate_options
    from core.lessons.report import summarize

    # Fail fast, before building the model (a few seconds).
    validate_options(args.top_k, args.temperature, GPT_CONFIG_124M["vocab_size"])
    # A few texts take milliseconds on the book's modules: packing the weights for the plug-in
    # would cost the process seconds it never earns back (a corpus pass does).
    model, label = load(args, accelerate=False)
    from core.lessons.views import lessons_report

    result = compute_loss(model, args.texts, args.top_k, args.temperature)
    summary = summarize(result)
    summary["model"] = label
    summary["model_key"] = args.model
    summary["lessons"] = lessons_report(result)
    if hasattr(sys.stdout, "reconfigure"):
        # A console or pipe that cannot encode "␣" or the user's emoji gets escapes, not a traceback.
        sys.stdout.reconfigure(errors="backslashreplace")
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return 0
    print(format_loss(summary))
    return 0


def format_loss(summary: dict) -> str:
    """The readable tables of `python -m core loss`: one row per prediction, then the six steps."""
    k = summary["top_k"]
    out = [f"Model: {summary['model']}   temperature {summary['temperature']}   top-k {k}"]
    for n, text in enumerate(summary["texts"], 1):
        out.append(
            f"\nText {n}: {text['text']!r}  ({len(text['token_ids'])} tokens, "
            f"{len(text['positions'])} predictions)"
        )
        out.append(
            "  tokens: "
            + " | ".join(f"{t} ({i})" for t, i in zip(text["tokens"], text["token_ids"], strict=True))
        )
        out.append(
            f"  {'pos':>3}  {'input':<14} -> {'target':<14} {'logit':>9} "
            f"{'target_proba':>12} {'log_proba':>10} "
            f"{'rank':>6}   top-{k} next tokens (proba)"
        )
        for p in text["positions"]:
            top = ", ".join(f"{t['piece']} {t['proba']:.2e}" for t in p["top_k"])
            out.append(
                f"  {p['position']:>3}  {p['input']:<14} -> {p['target']:<14} {p['target_logit']:9.4f} "
                f"{_fmt(p['target_proba']):>12} {_fmt(p['log_proba']):>10} {p['rank']:>6}   {top}"
            )
    s = summary["shapes"]
    ppl = format_perplexity(summary["perplexity"])
    inputs = [[p["input_id"] for p in t["positions"]] for t in summary["texts"]]
    targets = [[p["target_id"] for p in t["positions"]] for t in summary["texts"]]
    out += [
        "",
        f"inputs              {inputs}",
        f"targets             {targets}",
        f"logits {s['logits']} -> flattened {s['logits_flat']}; targets {s['targets']} -> {s['targets_flat']}"
        + ("  (padded; padding ignored)" if summary["padded"] else ""),
        "log_probas          " + ", ".join(_fmt(x) for x in summary["log_probas"]),
        f"avg_log_probas      {_fmt(summary['avg_log_probas'])}",
        f"neg_avg_log_probas  {_fmt(summary['neg_avg_log_probas'])}   (cross entropy by hand"
        + (
            "; a target proba underflowed to 0, so log gave -inf)"
            if summary["neg_avg_log_probas"] == "inf"
            else ")"
        ),
        f"F.cross_entropy     {_fmt(summary['loss'])}   "
        f"(built-in; difference {_fmt_e(summary['difference'])})",
        f"perplexity          {ppl}   = exp(loss); "
        f"a uniform guess over the vocabulary: {summary['uniform_perplexity']}",
    ]
    if "lessons" in summary:
        u, les = summary["lessons"]["units"]["batch"], summary["lessons"]
        out.append(
            f"in other units      {_fmt(u['loss_bits'])} bits per token, {_fmt(u['bits_per_byte'])} bits per "
            f"byte, perplexity per byte {_fmt(u['perplexity_per_byte'])}; lowest loss at temperature "
            f"{les['temperature_optimal']:.3f} ({_fmt(les['temperature_optimal_loss'])})"
        )
    return "\n".join(out)
