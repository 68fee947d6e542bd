"""The ``patsparse`` command: one sub-module per sub-command.

Each module in ``COMMANDS`` defines ``register(subparsers)`` which adds its parser and sets
``func`` (a callable taking the parsed args and returning an exit code). Adding a command is
one module and one line here.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..errors import PatsparseError
from .options import stdout_closed

COMMANDS: list[str] = ["train", "demo", "bench", "compile", "run", "prune", "extract", "export", "export_onnx"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="patsparse",
        description="Pattern-based sparsity for CNNs: train, prune, compile, run, export to ONNX and benchmark.",
        epilog="Example: patsparse train --model resnet18 --dataset fashion-mnist --width 0.25 --epochs 1",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except PatsparseError as e:
        print(f"patsparse {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"patsparse {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not stdout_closed():
            raise
        # The reader left (`... | head`): what it did not read is not wanted. Point stdout at
        # /dev/null so the interpreter's final flush is silent, and exit as a process killed
        # by SIGPIPE would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
