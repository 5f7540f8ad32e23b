"""`qr-ds report RUN [RUN ...]`: the markdown report with figures for any training runs."""
from __future__ import annotations

import argparse
from pathlib import Path


def _run_arg(text: str) -> tuple[str, Path]:
    """LABEL=DIR, or DIR labelled by its folder name."""
    label, _, path = text.rpartition("=")
    path = Path(path)
    return (label or path.resolve().name), path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="markdown report with figures for training runs",
        description="Loss curves of every run overlaid, accuracy with paired tests between runs evaluated on "
                    "the same questions (the first RUN against each other), routing by each run's final router "
                    "over its pool, filter retention, throughput. Writes DIR/report.md, report.json and PNGs.")
    p.add_argument("runs", nargs="+", type=_run_arg, metavar="RUN",
                   help="training run folder, or LABEL=FOLDER to name it in the report")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for report.md, report.json, PNGs")
    p.add_argument("--eval", dest="eval_dirs", type=Path, action="append", default=[], metavar="DIR",
                   help="a `qr-ds eval --out` folder with these runs' checkpoints (repeatable)")
    p.add_argument("--retention", type=Path, metavar="FILE",
                   help="the filter's <filtered>.retention.json for the pool these runs trained on")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qr_ds.report.build import build_report

    labels = [label for label, _ in args.runs]
    if len(set(labels)) < len(labels):
        raise ValueError(f"report: two runs share a label ({', '.join(labels)}); name them LABEL=FOLDER")
    for _, path in args.runs:
        if not path.is_dir():
            raise FileNotFoundError(f"run folder not found: {path}")
    print(build_report(args.out, dict(args.runs), args.eval_dirs, args.retention))
    return 0
