"""``qr-ds generate``: teacher paths for every question in every style, resumable."""
from __future__ import annotations

import argparse

from qr_ds.stages import add_stage_args, load_stage_config, stage_overrides


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate teacher reasoning paths (paper 2.2)",
                              description=__doc__)
    add_stage_args(p, "GenerateConfig", "generate")
    p.add_argument("--plan", action="store_true", help="print the calls, tokens and time a run would spend; ask nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qr_ds.teacher.config import GenerateConfig
    from qr_ds.teacher.generate import generate, print_summary, spending_plan

    cfg = load_stage_config(GenerateConfig, args.config, "generate", stage_overrides(args))
    if args.plan:
        print("\n".join(spending_plan(cfg)))
        return 0
    stats = generate(cfg, progress=not args.no_progress)  # StageFailed: qr_ds.cli says it, never exit 0
    print_summary(stats, cfg.out)
    return 0
