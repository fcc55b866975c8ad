"""Options the commands share: which model (a registry key or the reader's own file) and where it runs."""

from __future__ import annotations

import sys

from core.errors import InvalidParameterError
from core.runtime.device import DEVICE_ENV, describe, resolve_device

DEFAULT_MODEL = "untrained-124m"  # the book's section 5.1 model


def add_model_options(p) -> None:
    p.add_argument(
        "--model",
        metavar="KEY|PATH",
        default=DEFAULT_MODEL,
        help=f"a model key from the registry (default {DEFAULT_MODEL}; a wrong key lists them), or your own "
        "model: the book's model.pth or model_and_optimizer.pth, a .safetensors file, a Hugging Face folder",
    )
    add_heads_option(p)
    add_device_option(p)


def add_heads_option(p) -> None:
    p.add_argument(
        "--heads",
        type=int,
        default=None,
        metavar="N",
        help="attention heads of your own model (--model PATH), needed only for a width other than "
        "GPT-2's 768, 1024, 1280 or 1600",
    )


def add_device_option(p) -> None:
    p.add_argument(
        "--device",
        default=None,
        help=f"auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps (default: ${DEVICE_ENV} or auto)",
    )


def own_model(args, device="cpu"):
    """--model PATH: the reader's own weights (core.models.own_model), moved to `device`; notes to stderr."""
    from core.models.own_model import load_own_model, to_device

    own = load_own_model(args.model, n_heads=args.heads)
    for note in own.notes:
        print(f"note: {note}", file=sys.stderr)
    label = f"Your own model {own.name} ({own.describe()})"
    return to_device(own.model, label, device), label


def is_path(args) -> bool:
    """--model names a file or folder (a registry key wins over a file of the same name)."""
    from core.models.own_model import is_model_path
    from core.models.registry import available_models

    return args.model is not None and args.model not in available_models() and is_model_path(args.model)


def load(args, accelerate: bool = True):
    """Check the key, the seed and the device first (a build takes seconds), then load the model;
    `accelerate` hands it to the CPU plug-in as the app serves its models."""
    from core.models.registry import get_spec, load_model

    if is_path(args):
        device = resolve_device(args.device)
        model, label = own_model(args, device)
        return model, f"{label}, on {describe(device)}"
    spec = get_spec(args.model)
    if not 0 <= args.seed < 2**63:
        raise InvalidParameterError(f"The seed must be a whole number from 0 to 2**63 - 1, got {args.seed}.")
    device = resolve_device(args.device)
    label = f"{spec.label}, seed {args.seed}" if spec.seeded else spec.label
    model = load_model(args.model, args.seed, device)
    if accelerate:
        from core.serving.frozen import freeze

        model = freeze(model)
    return model, f"{label}, on {describe(device)}"


def warn_unless_bf16_native(device) -> None:
    """--fast where bfloat16 is not native: say why it will be slow, then run it as asked."""
    from core.runtime.precision import bf16_unavailable

    if reason := bf16_unavailable(device):
        print(f"warning: {reason}; running it anyway, as asked", file=sys.stderr)
