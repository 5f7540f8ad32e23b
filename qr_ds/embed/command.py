"""``qr-ds embed``: embed every path once with the router's frozen encoder (cached by text hash)."""
from __future__ import annotations

import argparse

from qr_ds.stages import add_stage_args, load_stage_config, stage_overrides


def register(subparsers) -> None:
    p = subparsers.add_parser("embed", help="embed pool paths with the frozen router encoder (paper eq. 1)",
                              description=__doc__)
    add_stage_args(p, "EmbedConfig", "embed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qr_ds.embed.config import EmbedConfig
    from qr_ds.embed.run import print_result, run_embed
    cfg = load_stage_config(EmbedConfig, args.config, "embed", stage_overrides(args))
    print_result(run_embed(cfg, progress=not args.no_progress), cfg.out)
    return 0
