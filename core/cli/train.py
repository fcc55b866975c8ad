"""`python -m core train`: pretrain a GPT with the book's train_model_simple (section 5.2), saved by name."""

from __future__ import annotations

import signal

from core.cli.options import add_device_option, add_heads_option, is_path, own_model, warn_unless_bf16_native
from core.errors import InvalidParameterError
from core.runtime.device import resolve_device


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
    add_heads_option(p)
    add_device_option(p)
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

    from core.models.corpus import load_verdict, read_corpus_file
    from core.models.model_files import check_name
    from core.models.presets import describe_estimate, estimate_time, get_preset
    from core.models.registry import get_spec, load_model
    from core.models.storage import check_room
    from core.serving.runner import run_training

    preset = get_preset(args.preset, num_epochs=args.epochs, fast=args.fast or None)
    name = check_name(args.out or preset.name)  # fail fast, before reading the corpus
    _check_out(name, args.resume, args.force)
    if args.model is not None and not is_path(args):
        get_spec(args.model)  # a wrong key lists the valid ones before the corpus is read
    device = resolve_device(args.device)  # fail fast on a device this machine lacks
    if args.fast:
        warn_unless_bf16_native(device)
    # --model: start from that model's weights (a copy of its own; a resumed run has its own)
    start = None
    if args.model and not args.resume:
        start = own_model(args)[0] if is_path(args) else load_model(args.model, preset.seed, "cpu")
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
