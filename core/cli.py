"""Subcommands of `python -m core`. Each `add_*` registers one; `run` maps errors to exit codes."""

from __future__ import annotations

import json
import sys

from .errors import LossLensError


def _fmt(x) -> str:
    return "—" if x is None else (x if isinstance(x, str) else f"{x:.4f}" if abs(x) >= 1e-3 else f"{x:.4e}")


def add_loss(sub) -> None:
    p = sub.add_parser("loss", help="the six steps of figure 5.7 and the loss for one or more texts")
    p.add_argument("texts", nargs="+", metavar="TEXT", help="one text per batch row")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=123, help="seed of the untrained model (book: 123)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=cmd_loss)


def cmd_loss(args) -> int:
    from .loss import compute_loss, validate_options
    from .model import build_untrained_model
    from .report import summarize

    validate_options(args.top_k, args.temperature, 50257)  # fail fast, before building the model
    model = build_untrained_model(args.seed)
    summary = summarize(compute_loss(model, args.texts, args.top_k, args.temperature))
    summary["model"] = f"untrained GPT-2 124M, seed {args.seed}"
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return 0
    out = [f"Model: {summary['model']}   temperature {summary['temperature']}   top-k {summary['top_k']}"]
    for n, text in enumerate(summary["texts"], 1):
        out.append(f"\nText {n}: {text['text']!r}")
        out.append("  tokens: " + " | ".join(f"{t} ({i})" for t, i in zip(text["tokens"], text["token_ids"])))
        out.append(f"  {'input':>14} -> {'target':<14} {'logit':>9} {'proba':>11} {'log proba':>10} {'rank':>6}   top-k")
        for p in text["positions"]:
            top = ", ".join(f"{k['piece']!r} {k['proba']:.2e}" for k in p["top_k"])
            out.append(
                f"  {p['input']!r:>14} -> {p['target']!r:<14} {p['target_logit']:9.4f} "
                f"{_fmt(p['target_proba']):>11} {_fmt(p['log_proba']):>10} {p['rank']:>6}   {top}"
            )
    s = summary["shapes"]
    out += [
        "",
        f"logits {s['logits']} -> flattened {s['logits_flat']}; targets {s['targets']} -> {s['targets_flat']}",
        "log_probas          " + ", ".join(_fmt(x) for x in summary["log_probas"]),
        f"avg_log_probas      {_fmt(summary['avg_log_probas'])}",
        f"neg_avg_log_probas  {_fmt(summary['neg_avg_log_probas'])}   (manual cross entropy)",
        f"F.cross_entropy     {summary['loss']:.4f}   (built-in; difference {summary['difference']})",
        f"perplexity          {summary['perplexity']:.1f}   (uniform over the vocabulary: {summary['uniform_perplexity']})",
    ]
    print("\n".join(out))
    return 0


COMMANDS = [add_loss]


def run(args) -> int:
    try:
        return args.func(args)
    except LossLensError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
