"""``qr-ds generate``: teacher paths for every question in every style, resumable."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qr_ds.config import parse_override


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate teacher reasoning paths (paper 2.2)",
                              description=__doc__)
    p.add_argument("config", type=Path, help="YAML with a GenerateConfig, or a pipeline YAML with a generate: section")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, dotted keys as for train "
                                                                    "(limit=10 teacher.base_url=http://...)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="the same as a bare KEY=VALUE")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qr_ds.stages import StageFailed, load_stage_config
    from qr_ds.teacher.config import GenerateConfig
    from qr_ds.teacher.generate import generate, print_summary

    cfg = load_stage_config(GenerateConfig, args.config, "generate", [parse_override(s) for s in args.overrides + args.set])
    try:
        stats = generate(cfg, progress=not args.no_progress)
    except StageFailed as e:  # refused endpoint, too few paths, output locked: never exit 0
        print(f"qr-ds generate: failed: {e}", file=sys.stderr)
        return 1
    print_summary(stats, cfg.out)
    return 0
