"""Command line: `python -m core loss ...`, `python -m core dataset ...`, `python -m core train ...`."""

from __future__ import annotations

import argparse
import sys

from core import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core", description="LossLens: the loss math of GPT-2, step by step."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for register in cli.COMMANDS:
        register(sub)
    args = parser.parse_args(argv)
    return cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
