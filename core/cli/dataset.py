"""`python -m core dataset`: training and validation loss over a corpus, as in the book's section 5.1.3."""

from __future__ import annotations

import json
import sys

from core.cli.options import add_model_options, load, warn_unless_bf16_native
from core.lessons.report import format_perplexity


def add_dataset(sub) -> None:
    p = sub.add_parser("dataset", help="training and validation loss over a corpus (section 5.1.3)")
    p.add_argument(
        "--corpus", metavar="PATH", help="a UTF-8 text file (default: The Verdict that ships with LossLens)"
    )
    p.add_argument(
        "--train-ratio", type=float, default=0.9, help="share of characters for training (book: 0.9)"
    )
    p.add_argument(
        "--context-length", type=int, default=256, help="window length, the loaders' max_length (book: 256)"
    )
    p.add_argument("--stride", type=int, default=256, help="tokens between window starts (book: 256)")
    p.add_argument("--batch-size", type=int, default=2, help="windows per batch (book: 2)")
    p.add_argument("--num-batches", type=int, default=None, help="only the first N batches of each split")
    p.add_argument(
        "--seed", type=int, default=123, help="seed of the untrained model and the shuffle (book: 123)"
    )
    p.add_argument(
        "--positions",
        action="store_true",
        help="also the mean loss at each position of the window (a second pass)",
    )
    p.add_argument(
        "--fast",
        action="store_true",
        help="bfloat16 matmuls (autocast): faster on GPUs and CPUs with AVX-512 BF16 or AMX; "
        "prints how far the loss moved from float32 on each split's first batch",
    )
    add_model_options(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_dataset)


def cmd_dataset(args) -> int:
    # Lazy imports (as in every command): a command loads only the modules it uses.
    from core.models.corpus import load_verdict, read_corpus_file
    from core.models.loaders import LoaderSettings
    from core.serving.requests import evaluate_dataset

    settings = LoaderSettings(args.train_ratio, args.context_length, args.stride, args.batch_size, args.seed)
    settings.validate()  # fail fast, before reading the corpus or building the model
    text = read_corpus_file(args.corpus) if args.corpus else load_verdict()
    model, label = load(args)

    tty = sys.stderr.isatty()  # a terminal gets one updating line, a log one line per batch

    def progress(done, total, split):
        end = "\n" if done == total or not tty else ""
        print(
            f"\r{split:>5} batches {done}/{total}" if tty else f"{split} batches {done}/{total}",
            end=end,
            file=sys.stderr,
            flush=True,
        )

    if args.fast:
        from core.runtime.device import model_device

        warn_unless_bf16_native(model_device(model))
    result = evaluate_dataset(
        model, text, settings, num_batches=args.num_batches, progress=progress, fast=args.fast
    )
    summary = {
        "model": label,
        "model_key": args.model,
        "corpus": args.corpus or "The Verdict",
        **result.to_dict(),
    }
    if args.positions:
        from core.lessons.positions import position_losses

        pos = position_losses(model, text, settings, args.num_batches, progress=progress)
        summary["positions"] = {
            s: {k: pos[s][k] for k in ("position_means", "counts", "token_weighted_loss")}
            for s in ("train", "val")
        }
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return 0
    s = result.data
    out = [
        f"Model: {summary['model']}   corpus: {summary['corpus']}",
        f"Characters: {s.characters:,}   tokens: {s.tokens:,}",
        f"Settings: train ratio {settings.train_ratio}, context length {settings.context_length}, "
        f"stride {settings.stride}, batch size {settings.batch_size}"
        + (f", first {args.num_batches} batches" if args.num_batches else ""),
        f"{'split':<11}{'chars':>9}{'tokens':>9}{'windows':>9}{'batches':>9}"
        f"{'batch tokens':>14}{'loss':>12}{'perplexity':>13}",
    ]
    for c, loss, ppl in (
        (s.train, result.train_loss, result.train_perplexity),
        (s.val, result.val_loss, result.val_perplexity),
    ):
        out.append(
            f"{c.name:<11}{c.characters:>9,}{c.tokens:>9,}{c.windows:>9,}{c.batches:>9,}{c.batch_tokens:>14,}"
            f"{loss:>12.6f}{format_perplexity(ppl):>13}"
        )
    out.append(f"Training tokens: {s.train_tokens:,}   validation tokens: {s.val_tokens:,}")
    if d := result.bf16_differences:
        out.append(
            f"Precision: bfloat16 matmuls; against float32 on each split's first batch the loss moved "
            f"{d['train']:+.6f} (train) and {d['val']:+.6f} (val)"
        )
    out += [f"warning: {w}" for w in s.warnings]
    for split, p in summary.get("positions", {}).items():
        m = p["position_means"]
        out.append(
            f"{split:>5} loss by position: first {m[0]:.4f}, middle {m[len(m) // 2]:.4f}, last {m[-1]:.4f}"
        )
    print("\n".join(out))
    return 0
