"""`qr-ds report GROUP [GROUP ...]`: the markdown report with figures for groups of training runs."""
from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

from qr_ds.stages import StageFailed

GROUP_HELP = """LABEL=GLOB (the matching run folders are the training seeds of one method), LABEL=DIR, or DIR
(labelled by its folder name). Quote a glob ('qr=runs/qr_s*'): unquoted, zsh refuses it and a
bare runs/qr_s* becomes one group per folder. The first group is the reference."""


def parse_group(text: str) -> tuple[str, list[Path]]:
    """LABEL=GLOB, LABEL=DIR or DIR -> (label, run folders)."""
    label, _, pattern = text.rpartition("=")
    if not glob.has_magic(pattern):
        return (label or Path(pattern).resolve().name), [Path(pattern)]
    if not label:
        raise ValueError(f"report: {text!r} is a pattern without a label; write LABEL={pattern}")
    paths = sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_dir())
    if not paths:
        raise FileNotFoundError(f"report: group {label!r}: {pattern!r} matches no run folder")
    return label, paths


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="markdown report with figures for groups of training runs (seeds of each method)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Budgets of every group (optimizer steps, paths per step, tokens per student), accuracy\n"
                    "mean ± sd over each group's seeds, each group against the first with a 95% interval over\n"
                    "training seeds and test questions (docs/comparisons.md), loss curves, routing of each\n"
                    "seed's final router, filter retention, throughput. Writes DIR/report.md, report.json, PNGs.\n\n"
                    "example: qr-ds report 'QR-Distill=runs/qr_s*' 'w/o Route=runs/noroute_s*' \\\n"
                    "             --eval runs/eval --out runs/report")
    p.add_argument("groups", nargs="+", metavar="GROUP", help=GROUP_HELP)
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for report.md, report.json, PNGs")
    p.add_argument("--eval", dest="eval_dirs", type=Path, action="append", default=[], metavar="DIR",
                   help="a `qr-ds eval --out` folder with these runs' checkpoints (repeatable)")
    p.add_argument("--retention", type=Path, metavar="FILE",
                   help="the filter's <filtered>.retention.json for the pool these runs trained on")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when anything was left out of the report (it is still written; stderr names each)")
    p.add_argument("--may-differ", action="append", default=[], metavar="KEY",
                   help="a config key the seeds of a group may differ in besides seed and output_dir, e.g. "
                        "students[].model when each seed draws its own student init (repeatable; the report says so)")
    p.set_defaults(func=run)


class ReportIncomplete(StageFailed):
    """--strict: the report was written, but something had to be left out of it."""


def run(args: argparse.Namespace) -> int:
    from qr_ds.report.build import build_report, say_left_out

    groups = [parse_group(g) for g in args.groups]
    labels = [label for label, _ in groups]
    if len(set(labels)) < len(labels):
        raise ValueError(f"report: two groups share a label ({', '.join(labels)}); name them LABEL=FOLDER")
    for section, flag, given in (("accuracy", "--eval", args.eval_dirs), ("quality filter", "--retention", args.retention)):
        if not given:  # not asked for, so not left out: said, but --strict does not count it
            print(f"report: no {section} section: no {flag} given", file=sys.stderr)
    left_out: list[str] = []

    def tell(line: str) -> None:
        left_out.append(line)
        say_left_out(line)

    print(build_report(args.out, dict(groups), args.eval_dirs, args.retention, may_differ=tuple(args.may_differ),
                       left_out=tell))
    if args.strict and left_out:
        raise ReportIncomplete(f"--strict: {len(left_out)} thing(s) left out of {args.out / 'report.md'} "
                               "(each named above)")
    return 0
