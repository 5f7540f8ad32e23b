"""``qr-ds filter``: keep correct paths, then those an LLM judge finds free of spurious steps."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qr_ds.config import parse_override


def register(subparsers) -> None:
    p = subparsers.add_parser("filter", help="two-step quality filter of the path pool (paper 2.3)",
                              description=__doc__)
    p.add_argument("config", type=Path, help="YAML with a FilterConfig, or a pipeline YAML with a filter: section")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, dotted keys as for train "
                                                                    "(limit=10 teacher.base_url=http://...)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="the same as a bare KEY=VALUE")
    p.add_argument("--no-judge", action="store_true", help="skip step 2 (same as judge: {backend: none})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qr_ds.filter.config import FilterConfig
    from qr_ds.filter.run import FilterFailed, print_result, run_filter
    from qr_ds.stages import StageFailed, load_stage_config

    overrides = [parse_override(s) for s in args.overrides + args.set] + ([("judge.backend", "none")] if args.no_judge else [])
    cfg = load_stage_config(FilterConfig, args.config, "filter", overrides)
    try:
        print_result(run_filter(cfg, progress=not args.no_progress))
    except StageFailed as e:  # refused judge, too little judged or kept, output locked: never exit 0
        if isinstance(e, FilterFailed):
            print_result(e.result)
        print(f"qr-ds filter: failed: {e}", file=sys.stderr)
        return 1
    return 0
