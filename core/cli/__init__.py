"""Subcommands of `python -m core`, one module per command; `run` maps errors to exit codes."""

from __future__ import annotations

import sys

from core.cli.dataset import add_dataset
from core.cli.loss import add_loss
from core.cli.train import add_train
from core.errors import LossLensError

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
