"""``qr-ds embed``: embed every path once with the router's frozen encoder (cached by text hash)."""
from __future__ import annotations

import argparse
from pathlib import Path

from qr_ds.config import parse_override


def register(subparsers) -> None:
    p = subparsers.add_parser("embed", help="embed pool paths with the frozen router encoder (paper eq. 1)",
                              description=__doc__)
    p.add_argument("config", type=Path, help="YAML with an EmbedConfig, or a pipeline YAML with an embed: section")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, dotted keys as for train "
                                                                    "(limit=10 teacher.base_url=http://...)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="the same as a bare KEY=VALUE")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qr_ds.embed.config import EmbedConfig
    from qr_ds.embed.run import print_result, run_embed
    from qr_ds.stages import load_stage_config

    cfg = load_stage_config(EmbedConfig, args.config, "embed", [parse_override(s) for s in args.overrides + args.set])
    print_result(run_embed(cfg, progress=not args.no_progress), cfg.out)
    return 0
