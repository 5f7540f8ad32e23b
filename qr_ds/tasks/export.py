"""`qr-ds data export TASK --split S --out FILE`: a task's hub split as the JSONL file configs read.

The records are written as the hub gives them (every task loads its hub format), each with
``source_split`` added, so that loading the file later records the split it holds. Without the hub
(HF_HUB_OFFLINE=1, no network) the command fails with one line naming the dataset, config and split,
its page, and the command to run on a machine with internet. ``--from-file`` reads a local .parquet
or .jsonl download through the same ``datasets`` code path instead of the hub.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="benchmark data files (export a hub split)",
                                 description="Benchmark data files.")
    actions = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = actions.add_parser(
        "export", help="write a task's hub split as JSONL",
        description="Download a task's split from the Hugging Face hub (via `datasets`) and write it as "
                    "JSONL that `data:` in a config and every stage read. Offline it exits 2 and says what "
                    "to download from where, and the command to run on a machine with internet.",
    )
    p.add_argument("task", help="task name (see `qr-ds tasks`)")
    p.add_argument("--split", default=None, help="hub split (default: the task's evaluation split)")
    p.add_argument("--config", default=None, help="hub configuration (default: the task's)")
    p.add_argument("--dataset", default=None, help="hub dataset name (default: the task's)")
    p.add_argument("--out", required=True, help="the JSONL file to write")
    p.add_argument("--limit", type=int, default=None, help="only the first N records")
    p.add_argument("--from-file", default=None, metavar="FILE",
                   help="read a downloaded .parquet/.jsonl of the split instead of the hub (same code path)")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from qr_ds.tasks.base import get_task, is_test_split

    task = get_task(args.task)
    if args.limit is not None and args.limit < 1:  # 0 or -1 wrote an empty file with exit 0
        raise ValueError(f"--limit {args.limit}: give a count of records >= 1, or leave it out for all of them")
    summary = export_split(task.name, args.out, split=args.split, config=args.config, dataset=args.dataset,
                           limit=args.limit, from_file=args.from_file)
    note = " (a test split: evaluate on it, never train on it)" if is_test_split(task, summary["split"]) else ""
    print(f"wrote {summary['n']} {task.name} records of {summary['origin']}, split {summary['split']!r}, "
          f"to {summary['out']}{note}")
    return 0


def export_split(task_name: str, out: str | Path, split: str | None = None, config: str | None = None,
                 dataset: str | None = None, limit: int | None = None,
                 from_file: str | Path | None = None) -> dict[str, Any]:
    """Write the split's records to ``out`` after checking that each one loads as the task's example."""
    from qr_ds.data.jsonl import write_jsonl
    from qr_ds.tasks.base import SPLIT_FIELD, _read_json_rows, datasets_rows, get_task, hub_rows

    task = get_task(task_name)
    name, config, split = task.hub_source(dataset or task.hub[0], split, config)
    if from_file is not None and _builder(Path(from_file)) == "json":
        # our own reader: a bad line is named by file:line (datasets said only DatasetGenerationError)
        numbered = _read_json_rows(Path(from_file), limit)
        origin = str(from_file)
    elif from_file is not None:
        numbered = list(enumerate(datasets_rows(lambda d: d.load_dataset("parquet", data_files=str(from_file),
                                                                         split="train"), limit), start=1))
        origin = str(from_file)
    else:
        numbered = list(enumerate(hub_rows(task, name, config, split, limit, out=str(out)), start=1))
        origin = f"{name}" + (f" ({config})" if config else "")
    rows = [rec for _, rec in numbered]
    for where, rec in numbered:
        try:
            task.from_record(rec)
        except (ValueError, TypeError, KeyError) as e:
            sep = ":" if from_file is not None else ": record "
            raise ValueError(f"{origin}{sep}{where}: not a {task.name} record: {e}") from e
    n = write_jsonl(out, ({**_jsonable(rec), SPLIT_FIELD: split} for rec in rows))
    return {"n": n, "out": str(out), "split": split, "config": config, "origin": origin}


def _builder(path: Path) -> str:
    builders = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}
    if path.suffix not in builders:
        raise ValueError(f"{path}: --from-file takes .parquet, .jsonl or .json, not {path.suffix!r}")
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    return builders[path.suffix]


def _jsonable(rec: dict) -> dict:
    """The record with values JSON cannot hold (dates, bytes) as strings."""
    return json.loads(json.dumps(rec, default=str, ensure_ascii=False))
