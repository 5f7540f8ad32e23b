"""`qr-ds tasks` (list the benchmarks) and `qr-ds score` (judge a file of model outputs)."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("tasks", help="list the benchmark tasks",
                              description="List the registered tasks: name, answer kind and description.")
    p.set_defaults(func=run_tasks)

    p = subparsers.add_parser(
        "score", help="score model outputs in a JSONL file",
        description="Extract each record's final answer from its 'output' and judge it against the gold. "
                    "Records hold the task's question fields (release or hub format, or id/question/gold) "
                    "and 'output'. Malformed lines are quarantined to FILE.quarantine.jsonl and reported.",
    )
    p.add_argument("--task", required=True, help="task name (see `qr-ds tasks`)")
    p.add_argument("file", metavar="FILE.jsonl", help="records with the question fields and 'output'")
    p.add_argument("--out", default=None, help="scored rows (default: FILE.scored.jsonl)")
    p.add_argument("--field", default="output", help="the field holding the model output (default: output; "
                                                     "teacher dumps often use 'response')")
    p.set_defaults(func=run_score)


def run_tasks(args: argparse.Namespace) -> int:
    from qr_ds.tasks import list_tasks

    tasks = list_tasks()
    width = max(len(t.name) for t in tasks)
    for t in tasks:
        print(f"{t.name:<{width}}  {t.answer_kind:<9}  {t.description}")
    return 0


def run_score(args: argparse.Namespace) -> int:
    from qr_ds.tasks.score import score_file

    s = score_file(args.task, args.file, args.out, args.field)
    lo, hi = s["ci95"]
    print(f"{s['task']}: accuracy {s['accuracy']:.2%} ({s['correct']}/{s['n']}), "
          f"95% CI [{lo:.2%}, {hi:.2%}], no answer {s['no_answer']}")
    if "ref_agreement" in s:
        print(f"verdicts agree with the records' ref_correct on {s['ref_agreement']:.2%}")
    if s["rejected"]:
        print(f"rejected {s['rejected']} malformed line(s): see {s['quarantine']}")
    print(f"wrote {s['out']}")
    return 0
