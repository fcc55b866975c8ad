"""Subcommands of `python -m core`. Each `add_*` registers one; `run` maps errors to exit codes."""

from __future__ import annotations

import json
import signal
import sys

from core.errors import InvalidParameterError, LossLensError
from core.lessons.report import format_perplexity
from core.runtime.device import DEVICE_ENV, describe, resolve_device

DEFAULT_MODEL = "untrained-124m"  # the book's section 5.1 model


def _fmt(x) -> str:
    return "—" if x is None else (x if isinstance(x, str) else f"{x:.4f}" if abs(x) >= 1e-3 else f"{x:.4e}")


def _fmt_e(x) -> str:
    return x if isinstance(x, str) else f"{x:.2e}"


def _add_model_options(p) -> None:
    p.add_argument(
        "--model",
        metavar="KEY|PATH",
        default=DEFAULT_MODEL,
        help=f"a model key from the registry (default {DEFAULT_MODEL}; a wrong key lists them), or your own "
        "model: the book's model.pth or model_and_optimizer.pth, a .safetensors file, a Hugging Face folder",
    )
    _add_heads_option(p)
    p.add_argument(
        "--device",
        default=None,
        help=f"auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps (default: ${DEVICE_ENV} or auto)",
    )


def _add_heads_option(p) -> None:
    p.add_argument(
        "--heads",
        type=int,
        default=None,
        metavar="N",
        help="attention heads of your own model (--model PATH), needed only for a width other than "
        "GPT-2's 768, 1024, 1280 or 1600",
    )


def _own_model(args, device="cpu"):
    """--model PATH: the reader's own weights (core.models.own_model), moved to `device`; notes to stderr."""
    from core.models.own_model import load_own_model, to_device

    own = load_own_model(args.model, n_heads=args.heads)
    for note in own.notes:
        print(f"note: {note}", file=sys.stderr)
    label = f"Your own model {own.name} ({own.describe()})"
    return to_device(own.model, label, device), label


def _is_path(args) -> bool:
    """--model names a file or folder (a registry key wins over a file of the same name)."""
    from core.models.own_model import is_model_path
    from core.models.registry import available_models

    return args.model is not None and args.model not in available_models() and is_model_path(args.model)


def _load(args):
    """Check the key, the seed and the device first (a build takes seconds), then load the model."""
    from core.models.registry import get_spec, load_model

    if _is_path(args):
        device = resolve_device(args.device)
        model, label = _own_model(args, device)
        return model, f"{label}, on {describe(device)}"
    spec = get_spec(args.model)
    if not 0 <= args.seed < 2**63:
        raise InvalidParameterError(f"The seed must be a whole number from 0 to 2**63 - 1, got {args.seed}.")
    device = resolve_device(args.device)
    label = f"{spec.label}, seed {args.seed}" if spec.seeded else spec.label
    return load_model(args.model, args.seed, device), f"{label}, on {describe(device)}"


def add_loss(sub) -> None:
    p = sub.add_parser("loss", help="the six steps of figure 5.7 and the loss for one or more texts")
    p.add_argument("texts", nargs="+", metavar="TEXT", help="one text per batch row")
    p.add_argument("--top-k", type=int, default=5, help="next tokens listed per position (1..50257)")
    p.add_argument(
        "--temperature", type=float, default=1.0, help="divides the logits before every step (> 0)"
    )
    p.add_argument("--seed", type=int, default=123, help="seed of the untrained model (book: 123)")
    _add_model_options(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=cmd_loss)


def cmd_loss(args) -> int:
    # Lazy imports in each command: a command loads only the modules it uses.
    from core.book.model import GPT_CONFIG_124M
    from core.lessons.loss import compute_loss, validate_options
    from core.lessons.report import summarize

    # Fail fast, before building the model (a few seconds).
    validate_options(args.top_k, args.temperature, GPT_CONFIG_124M["vocab_size"])
    model, label = _load(args)
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


def _warn_unless_bf16_native(device) -> None:
    """--fast where bfloat16 is not native: say why it will be slow, then run it as asked."""
    from core.runtime.precision import bf16_unavailable

    if reason := bf16_unavailable(device):
        print(f"warning: {reason}; running it anyway, as asked", file=sys.stderr)


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
    _add_model_options(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_dataset)


def cmd_dataset(args) -> int:
    # Lazy imports (as in every command): a command loads only the modules it uses.
    from core.book.data import LoaderSettings
    from core.book.evaluate import evaluate_dataset
    from core.models.corpus import load_verdict, read_corpus_file

    settings = LoaderSettings(args.train_ratio, args.context_length, args.stride, args.batch_size, args.seed)
    settings.validate()  # fail fast, before reading the corpus or building the model
    text = read_corpus_file(args.corpus) if args.corpus else load_verdict()
    model, label = _load(args)

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

        _warn_unless_bf16_native(model_device(model))
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


def add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="pretrain a GPT on a corpus with the book's train_model_simple (section 5.2)"
    )
    p.add_argument(
        "--preset",
        choices=["quick", "book"],
        default="quick",
        help="quick: a small GPT in under a minute; book: GPT_CONFIG_124M for 10 epochs",
    )
    p.add_argument(
        "--corpus", metavar="PATH", help="a UTF-8 text file (default: The Verdict that ships with LossLens)"
    )
    p.add_argument("--epochs", type=int, default=None, help="number of epochs (default: the preset's)")
    p.add_argument(
        "--out", metavar="NAME", default=None, help="save as NAME in the cache (default: the preset's name)"
    )
    p.add_argument("--resume", action="store_true", help="continue the stopped run saved as NAME")
    p.add_argument(
        "--force",
        action="store_true",
        help="overwrite the model saved as NAME (without it, an existing one is kept)",
    )
    p.add_argument(
        "--estimate", action="store_true", help="only measure a few steps and print the time estimate"
    )
    p.add_argument(
        "--fast",
        action="store_true",
        help="bfloat16 training steps (autocast): faster on GPUs and CPUs with AVX-512 BF16 or AMX; "
        "evaluations stay float32 and print how far bfloat16 is on the same batches",
    )
    p.add_argument(
        "--model",
        metavar="KEY|PATH",
        default=None,
        help="start from this model's weights and configuration (default: the preset's fresh model): "
        "a registry key, or your own model.pth, .safetensors file or Hugging Face folder",
    )
    _add_heads_option(p)
    p.add_argument(
        "--device",
        default=None,
        help=f"auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps (default: ${DEVICE_ENV} or auto)",
    )
    p.set_defaults(func=cmd_train)


def _check_out(name: str, resume: bool, force: bool) -> None:
    """--out NAME: a resumed run needs a stopped one saved as NAME; a fresh one overwrites a saved
    model only with --force."""
    from core.errors import WeightsError
    from core.models import checkpoints

    meta = checkpoints.saved_run(name)
    if resume:
        if meta is None:
            raise WeightsError(
                f"No model is saved as {name!r}, so there is nothing to resume; train it first."
            )
        if not checkpoints.is_resumable(name):
            raise WeightsError(
                f"{name!r} cannot be resumed: it finished all its epochs, or its resume data is gone."
            )
    elif checkpoints.model_path(name).exists() and not force:
        raise InvalidParameterError(
            f"A model named {name!r} is already saved; add --force to overwrite it, or choose another --out."
        )


def cmd_train(args) -> int:
    # Lazy imports (as in every command): a command loads only the modules it uses.
    from dataclasses import replace

    from core.models.checkpoints import check_name, check_room
    from core.models.corpus import load_verdict, read_corpus_file
    from core.models.presets import describe_estimate, estimate_time, get_preset
    from core.models.registry import get_spec, load_model
    from core.serving.runner import run_training

    preset = get_preset(args.preset, num_epochs=args.epochs, fast=args.fast or None)
    name = check_name(args.out or preset.name)  # fail fast, before reading the corpus
    _check_out(name, args.resume, args.force)
    if args.model is not None and not _is_path(args):
        get_spec(args.model)  # a wrong key lists the valid ones before the corpus is read
    device = resolve_device(args.device)  # fail fast on a device this machine lacks
    if args.fast:
        _warn_unless_bf16_native(device)
    # --model: start from that model's weights (a copy of its own; a resumed run has its own)
    start = None
    if args.model and not args.resume:
        start = _own_model(args)[0] if _is_path(args) else load_model(args.model, preset.seed, "cpu")
    if start is not None:  # the run, its memory check and its estimate follow the start model's size
        preset = replace(preset, cfg=dict(start.cfg))
    check_room(preset.cfg, name)  # its save fits the quota and the disk, before hours of training
    text = read_corpus_file(args.corpus) if args.corpus else load_verdict()
    print(f"Preset {preset.name}: {preset.description}", flush=True)
    if args.estimate or preset.name == "book":
        print(describe_estimate(estimate_time(preset, text, device=device)), flush=True)
        if args.estimate:
            return 0
    stop = []
    previous = signal.signal(
        signal.SIGINT, lambda *_: stop.append(True)
    )  # Ctrl-C: stop after this step, save
    try:
        result = run_training(
            preset,
            text,
            name,
            resume=args.resume,
            device=device,
            init_model=start,
            should_stop=lambda: bool(stop),
            log=lambda line: print(line, flush=True),
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    s = result.state
    status = (
        "finished"
        if result.finished
        else f"stopped at step {s.global_step}; continue with --resume --out {name}"
    )
    print(
        f"{status}: {s.global_step + 1} steps, {s.tokens_seen:,} tokens seen, {result.elapsed_s:.1f} s "
        f"({result.elapsed_s / max(s.global_step + 1, 1):.2f} s per step incl. evaluation). "
        f"Saved {result.path}"
    )
    return 0


COMMANDS = [add_loss, add_dataset, add_train]


def run(args) -> int:
    try:
        return args.func(args)
    except LossLensError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
