"""``qr-ds filter``: keep correct paths, then those an LLM judge finds free of spurious steps."""
from __future__ import annotations

import argparse

from qr_ds.stages import add_stage_args, load_stage_config, stage_overrides


def register(subparsers) -> None:
    p = subparsers.add_parser("filter", help="two-step quality filter of the path pool (paper 2.3)",
                              description=__doc__)
    add_stage_args(p, "FilterConfig", "filter")
    p.add_argument("--no-judge", action="store_true", help="skip step 2 (same as judge: {backend: none})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qr_ds.filter.config import FilterConfig
    from qr_ds.filter.run import FilterFailed, print_result, run_filter
    overrides = stage_overrides(args) + ([("judge.backend", "none")] if args.no_judge else [])
    cfg = load_stage_config(FilterConfig, args.config, "filter", overrides)
    try:  # StageFailed (refused judge, too little judged or kept, output locked): qr_ds.cli says it
        print_result(run_filter(cfg, progress=not args.no_progress))
    except FilterFailed as e:  # its outputs were written: show their table before the failure
        print_result(e.result)
        raise
    return 0
