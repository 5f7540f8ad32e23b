"""`qr-ds data export TASK (--part train|dev|test | --split S) --out FILE`: a task's hub split as the
JSONL file configs read. ``--part`` reads the task's own sources (SOURCES): train and dev are two
disjoint cuts of its training split, test its evaluation split; a train or dev part never reads a test split.

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

import numpy as np


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
    p.add_argument("--part", choices=PARTS, default=None,
                   help="train: the task's training source (SOURCES) less the dev cut; dev: the cut; test: the "
                        "evaluation split. train and dev refuse a test split")
    p.add_argument("--dev-size", type=int, default=None,
                   help=f"questions in the dev cut (default: {DEV_SIZE}, at most a tenth of the training source)")
    p.add_argument("--split", default=None, help="hub split (default: the part's, else the task's evaluation split)")
    p.add_argument("--config", default=None, help="hub configuration (default: the task's)")
    p.add_argument("--dataset", default=None, help="hub dataset name (default: the task's)")
    p.add_argument("--out", required=True, help="the JSONL file to write")
    p.add_argument("--limit", type=int, default=None, help="only the first N records")
    p.add_argument("--from-file", default=None, metavar="FILE",
                   help="read a downloaded .parquet/.jsonl of the split instead of the hub (same code path)")
    p.set_defaults(func=run_export)


PARTS = ("train", "dev", "test")
DEV_SIZE = 200  # dev questions cut from the training source: enough to watch accuracy move, cheap to score
DEV_SEED = 0  # train and dev are cut by the same seeded order, so they never share a question

# task -> (dataset, config, split) each of the train and test parts reads by default: Table 1's five and
# GSM8K. MATH-500 is 500 problems of MATH's test split, so MATH trains on MATH's 7,500 training problems.
# BIG-bench Date has train (296) and validation (73); the validation split is what it is scored on.
SOURCES: dict[str, dict[str, tuple[str, str | None, str]]] = {
    "gsm8k": {"train": ("openai/gsm8k", "main", "train"), "test": ("openai/gsm8k", "main", "test")},
    "arc_challenge": {"train": ("allenai/ai2_arc", "ARC-Challenge", "train"),
                      "test": ("allenai/ai2_arc", "ARC-Challenge", "test")},
    "math": {"train": ("DigitalLearningGmbH/MATH-lighteval", "default", "train"),
             "test": ("HuggingFaceH4/MATH-500", None, "test")},
    "anli": {"train": ("facebook/anli", None, "train_r3"), "test": ("facebook/anli", None, "test_r3")},
    "strategyqa": {"train": ("ChilleD/StrategyQA", None, "train"), "test": ("ChilleD/StrategyQA", None, "test")},
    "date_understanding": {"train": ("tasksource/bigbench", "date_understanding", "train"),
                           "test": ("tasksource/bigbench", "date_understanding", "validation")},
}


def run_export(args: argparse.Namespace) -> int:
    from qr_ds.tasks.base import get_task, is_test_split

    task = get_task(args.task)
    if args.limit is not None and args.limit < 1:  # 0 or -1 wrote an empty file with exit 0
        raise ValueError(f"--limit {args.limit}: give a count of records >= 1, or leave it out for all of them")
    if args.part is None:
        summary = export_split(task.name, args.out, split=args.split, config=args.config, dataset=args.dataset,
                               limit=args.limit, from_file=args.from_file)
    else:
        summary = export_part(task.name, args.part, args.out, args.dev_size, split=args.split, config=args.config,
                              dataset=args.dataset, from_file=args.from_file)
    note = " (a test split: evaluate on it, never train on it)" if is_test_split(task, summary["split"]) else ""
    print(f"wrote {summary['n']} {task.name} records of {summary['origin']}, split {summary['split']!r}, "
          f"to {summary['out']}{note}")
    return 0


def part_source(task_name: str, part: str, split: str | None, config: str | None,
                dataset: str | None) -> tuple[str, str | None, str]:
    """(dataset, config, split) a part reads; a train or dev part that would read a test split is refused."""
    from qr_ds.tasks.base import get_task, is_test_split

    if task_name not in SOURCES:
        raise ValueError(f"--part: no sources known for task {task_name!r}; known: {', '.join(SOURCES)} "
                         "(give --split, --dataset and --config without --part)")
    default = SOURCES[task_name]["test" if part == "test" else "train"]
    source = (dataset or default[0], config if config is not None else (default[1] if dataset is None else None),
              split or default[2])
    if part != "test" and is_test_split(get_task(task_name), source[2]):
        raise ValueError(f"--part {part}: split {source[2]!r} is {task_name}'s evaluation split: training or "
                         f"checking on it leaks the test into training; the training source is "
                         f"{default[0]} split {default[2]!r}")
    return source


def export_part(task_name: str, part: str, out: str | Path, dev_size: int | None = None, split: str | None = None,
                config: str | None = None, dataset: str | None = None, from_file: str | Path | None = None) -> dict:
    """Write one part: test as it is; train and dev as two disjoint cuts of the training source."""
    # offline, the hint repeats this command: --split of the part's source would write the whole split
    given = " ".join(f"--{k} {v}" for k, v in (("part", part), ("split", split), ("dataset", dataset),
                                               ("config", config)) if v is not None)
    name, config, split = part_source(task_name, part, split, config, dataset)
    if part == "test":
        return export_split(task_name, out, split=split, config=config, dataset=name, from_file=from_file,
                            export_args=given)
    rows, origin = source_rows(task_name, name, config, split, None, from_file, out, given)
    if dev_size is not None and not 0 < dev_size < len(rows):
        raise ValueError(f"--dev-size {dev_size}: give 1..{len(rows) - 1} (the training source has {len(rows)})")
    n_dev = dev_size or min(DEV_SIZE, len(rows) // 10)
    dev = set(np.random.default_rng(DEV_SEED).permutation(len(rows))[:n_dev].tolist())
    keep = [r for i, r in enumerate(rows) if (i in dev) == (part == "dev")]
    return write_rows(keep, out, split, config, f"{origin}, {part} cut ({n_dev} dev of {len(rows)})")


def source_rows(task_name: str, name: str, config: str | None, split: str, limit: int | None,
                from_file: str | Path | None, out: str | Path,
                export_args: str | None = None) -> tuple[list[dict], str]:
    """The split's records, each checked to load as the task's example, and where they came from."""
    from qr_ds.tasks.base import _read_json_rows, datasets_rows, get_task, hub_rows

    task = get_task(task_name)
    if from_file is not None and _builder(Path(from_file)) == "json":
        # our own reader: a bad line is named by file:line (datasets said only DatasetGenerationError)
        numbered = _read_json_rows(Path(from_file), limit)
        origin = str(from_file)
    elif from_file is not None:
        numbered = list(enumerate(datasets_rows(lambda d: d.load_dataset("parquet", data_files=str(from_file),
                                                                         split="train"), limit), start=1))
        origin = str(from_file)
    else:
        numbered = list(enumerate(hub_rows(task, name, config, split, limit, str(out), export_args), start=1))
        origin = f"{name}" + (f" ({config})" if config else "")
    for where, rec in numbered:
        try:
            task.from_record(rec)
        except (ValueError, TypeError, KeyError) as e:
            sep = ":" if from_file is not None else ": record "
            raise ValueError(f"{origin}{sep}{where}: not a {task.name} record: {e}") from e
    return [rec for _, rec in numbered], origin


def write_rows(rows: list[dict], out: str | Path, split: str, config: str | None, origin: str) -> dict[str, Any]:
    from qr_ds.data.jsonl import write_jsonl
    from qr_ds.tasks.base import SPLIT_FIELD

    n = write_jsonl(out, ({**_jsonable(rec), SPLIT_FIELD: split} for rec in rows))
    return {"n": n, "out": str(out), "split": split, "config": config, "origin": origin}


def export_split(task_name: str, out: str | Path, split: str | None = None, config: str | None = None,
                 dataset: str | None = None, limit: int | None = None,
                 from_file: str | Path | None = None, export_args: str | None = None) -> dict[str, Any]:
    """Write the split's records to ``out`` after checking that each one loads as the task's example."""
    from qr_ds.tasks.base import get_task

    task = get_task(task_name)
    name, config, split = task.hub_source(dataset or task.hub[0], split, config)
    rows, origin = source_rows(task_name, name, config, split, limit, from_file, out, export_args)
    return write_rows(rows, out, split, config, origin)


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
