"""`qr-ds` command line: one subcommand per pipeline stage.

Each stage module exposes ``register(subparsers)`` adding its parser with ``func`` set; modules
are imported only to build their parser, so ``qr-ds tasks`` never imports torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# (subcommand module, one-line help): each module defines register(subparsers).
COMMANDS = [
    "qr_ds.tasks.command",  # tasks, score
    "qr_ds.tasks.export",  # data export
    "qr_ds.teacher.command",  # generate
    "qr_ds.filter.command",  # filter
    "qr_ds.embed.command",  # embed
    "qr_ds.train.command",  # train
    "qr_ds.eval.command",  # eval
    "qr_ds.demo",  # demo
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qr-ds", description="QR-Distill on DeepSpeed")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # stage not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from qr_ds.config import ConfigError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"qr-ds {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
