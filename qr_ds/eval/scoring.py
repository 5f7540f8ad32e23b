"""Accuracy rows: students, their ensembles, zero-shot bases and the teacher, in Table 1 layout."""
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Iterator

from qr_ds.data.pool import iter_pool
from qr_ds.tasks import Example, get_task
from qr_ds.tasks.score import wilson_interval

ENSEMBLES = ("ensemble-logprob", "ensemble-vote")


def ensemble(rows: list[dict]) -> list[dict]:
    """Per (checkpoint, task, id) over the students' predictions: (a) the answer of the student with
    the highest sequence log-prob (the reference code's rule) and (b) the majority answer, ties
    (and the no-answer case) going to the tied answer with the highest sequence log-prob."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["checkpoint"], r["task"], r["id"])].append(r)
    out = []
    for (ckpt, task_name, _), members in groups.items():
        if len(members) < 2:
            continue
        task = get_task(task_name)
        best = max(members, key=lambda r: r["logprob"])
        votes = Counter(r["extracted"] for r in members if r["extracted"] is not None)
        if votes:
            top = max(votes.values())
            tied = [r for r in members if r["extracted"] is not None and votes[r["extracted"]] == top]
            voted = max(tied, key=lambda r: r["logprob"])
        else:
            voted = best
        for name, pick in zip(ENSEMBLES, (best, voted)):
            ex = Example(id=pick["id"], task=task_name, question="", gold=pick["gold"])
            out.append({**pick, "student": name, "from_student": pick["student"],
                        "correct": task.is_correct(pick["extracted"], ex)})
    return out


def teacher_rows(pool: Path, tasks: list[str]) -> Iterator[dict]:
    """Per-path accuracy of the teacher's responses in the pool (every generated path counts once):
    the filter stage's ``correct`` where set, else extraction + is_correct on the response, streamed."""
    for rec in iter_pool(pool):
        if rec.task not in tasks or not rec.ok:
            continue
        task = get_task(rec.task)
        ex = Example(id=rec.question_id, task=rec.task, question=rec.question, gold=rec.gold, level=rec.level)
        pred = rec.answer if rec.correct is not None else task.extract(rec.response or "", ex)
        correct = rec.correct if rec.correct is not None else task.is_correct(pred, ex)
        yield {"checkpoint": "teacher", "student": rec.teacher, "task": rec.task, "id": rec.id,
               "question": rec.question, "extracted": pred, "gold": rec.gold, "correct": bool(correct)}


def label(checkpoint: str, student: str) -> str:
    if checkpoint == "teacher":
        return f"Teacher ({student}, per path)"
    if checkpoint == "zero-shot":
        return f"Zero-shot {student}"
    return f"{student} @ {checkpoint}"


def summarize(rows: Iterable[dict], tasks: list[str]) -> list[dict]:
    """One row per method with accuracy, 95% Wilson interval and n per task, plus the macro Avg.
    Rows are read once and only counted, so a stream of a million holds nothing."""
    cells: dict[tuple[str, str], dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    order: list[tuple[str, str]] = []
    for r in rows:
        key = (r["checkpoint"], r["student"])
        if key not in cells:
            order.append(key)
        c = cells[key][r["task"]]
        c[0] += bool(r["correct"])
        c[1] += 1
    table = []
    for key in order:
        per_task = {}
        for t in tasks:
            if t in cells[key]:
                k, n = cells[key][t]
                per_task[t] = {"accuracy": k / n, "ci95": list(wilson_interval(k, n)), "correct": k, "n": n}
        accs = [v["accuracy"] for v in per_task.values()]
        table.append({"method": label(*key), "checkpoint": key[0], "student": key[1], "tasks": per_task,
                      "avg": sum(accs) / len(accs) if len(accs) == len(tasks) else None})
    return table


def markdown(table: list[dict], tasks: list[str]) -> str:
    """Accuracy in percent with the 95% interval, columns = tasks + Avg (paper Table 1)."""
    head = ["Method", *tasks, "Avg"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        cols = [row["method"]]
        for t in tasks:
            c = row["tasks"].get(t)
            cols.append(f"{100 * c['accuracy']:.1f} [{100 * c['ci95'][0]:.1f}, {100 * c['ci95'][1]:.1f}] "
                        f"(n={c['n']})" if c else "–")
        cols.append(f"{100 * row['avg']:.1f}" if row["avg"] is not None else "–")
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)
