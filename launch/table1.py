"""Table 1 in one command: the five tasks trained in turn with the paper config, each evaluated on its
test part, then merged into one table with the paper's Avg. What is done is kept: a task whose
evaluation exists is not run again, and a training resumes from its latest checkpoint (--resume auto).
    python launch/table1.py --hostfile hostfile                 # train + evaluate + merge
    python launch/table1.py --merge-only                        # runs trained elsewhere (e.g. by sbatch)
Each task reads data/TASK/{dev,test}.jsonl and runs/TASK/embedded.jsonl (docs/clusters.md, sections 2-4)
and writes runs/TASK/qr_distill and runs/TASK/eval; the table goes to runs/table1.{md,json}."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

# Table 1's columns in the paper's order, and what differs per task (MATH: 3 epochs, section 3.2).
TASKS = {"strategyqa": [], "arc_challenge": [], "math": ["epochs=3"], "anli": [], "date_understanding": []}
TRAIN, EVAL = "configs/paper-mistral-gemma.yaml", "configs/eval-paper.yaml"


def task_commands(task: str, hostfile: str | None) -> list[list[str]]:
    qr_ds = [sys.executable, "-m", "qr_ds"]
    train = [*qr_ds, "train", "--config", TRAIN, *(["--hostfile", hostfile] if hostfile else []), "--resume", "auto",
             f"data.pool=runs/{task}/embedded.jsonl", f"output_dir=runs/{task}/qr_distill",
             f"eval.tasks={{{task}: data/{task}/dev.jsonl}}", *TASKS[task]]
    evaluate = [*qr_ds, "eval", "--config", EVAL, "--run", f"runs/{task}/qr_distill",
                "--task", f"{task}=data/{task}/test.jsonl", "--out", f"runs/{task}/eval",
                "--overwrite"]  # run only where no summary.json is: an evaluation cut short is moved aside
    return [train, evaluate]


def method_of(row: dict) -> str:
    """One Table 1 row across tasks: a trained student by its name (each task's run has its own step)."""
    return row["student"] if row["checkpoint"] not in ("zero-shot", "teacher") else row["method"]


def merge(summaries: dict[str, dict]) -> list[dict]:
    """Rows of every task's summary.json joined by method; Avg only where every task has a number."""
    table: dict[str, dict] = {}
    for task, summary in summaries.items():
        for row in summary["rows"]:
            cell = row["tasks"].get(task)
            if cell is not None:
                table.setdefault(method_of(row), {"method": method_of(row), "tasks": {}})["tasks"][task] = cell
    for row in table.values():
        accs = [row["tasks"][t]["accuracy"] for t in TASKS if t in row["tasks"]]
        row["avg"] = sum(accs) / len(TASKS) if len(accs) == len(TASKS) else None
    return list(table.values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hostfile", help="DeepSpeed hostfile (default: the GPUs of this node)")
    p.add_argument("--merge-only", action="store_true", help="only merge the evaluations that exist")
    args = p.parse_args(argv)
    from qr_ds.eval.scoring import markdown

    for task in TASKS:
        if args.merge_only or Path(f"runs/{task}/eval/summary.json").is_file():
            continue
        for cmd in task_commands(task, args.hostfile):
            print("[table1] " + " ".join(cmd), file=sys.stderr, flush=True)
            if subprocess.call(cmd) != 0:
                print(f"[table1] {task} failed; run this command again to continue from where it stopped",
                      file=sys.stderr)
                return 1
    summaries = {t: json.loads(Path(f"runs/{t}/eval/summary.json").read_text())
                 for t in TASKS if Path(f"runs/{t}/eval/summary.json").is_file()}
    missing = [t for t in TASKS if t not in summaries]
    table = merge(summaries)
    Path("runs").mkdir(exist_ok=True)
    Path("runs/table1.json").write_text(json.dumps({"tasks": list(TASKS), "missing": missing, "rows": table}, indent=1))
    text = markdown(table, list(TASKS)) + (f"\n\nNot evaluated yet: {', '.join(missing)} (no Avg)" if missing else "")
    Path("runs/table1.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
