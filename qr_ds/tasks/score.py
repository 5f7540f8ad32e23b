"""Score model outputs: extract each record's final answer and judge it against the gold."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from qr_ds.data.jsonl import RecordError, load_jsonl, write_jsonl
from qr_ds.tasks.base import Example, Task, get_task


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (sane at 0 and n)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def example_of(task: Task, rec: dict, field: str = "output") -> Example:
    """The record's example, from its release/hub fields or already-normalized id/question/gold."""
    if field not in rec:
        raise RecordError(field, "missing: the model output to score")
    if not isinstance(rec[field], (str, type(None))):
        raise RecordError(field, f"expected a string or null, got {type(rec[field]).__name__}")
    try:
        return task.from_record(rec)
    except RecordError:
        ex = task.normalized(rec)
        if ex is None:
            raise
        return ex


def score_records(task: str | Task, records: list[dict],
                  field: str = "output") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows (the records plus ``extracted`` and ``correct``) and a summary with a 95% interval; when every
    record has a reference verdict ``ref_correct``, also the share of verdicts that agree with it."""
    task = get_task(task) if isinstance(task, str) else task
    rows = []
    for rec in records:
        ex = example_of(task, rec, field)
        pred = task.extract(rec[field] or "", ex)
        rows.append({**rec, "gold": ex.gold, "extracted": pred, "correct": task.is_correct(pred, ex)})
    n, correct = len(rows), sum(r["correct"] for r in rows)
    lo, hi = wilson_interval(correct, n)
    summary = {"task": task.name, "n": n, "correct": correct, "accuracy": correct / n if n else 0.0,
               "ci95": [lo, hi], "no_answer": sum(r["extracted"] is None for r in rows)}
    if rows and all(isinstance(r.get("ref_correct"), bool) for r in rows):
        summary["ref_agreement"] = sum(r["correct"] == r["ref_correct"] for r in rows) / n
    return rows, summary


def score_file(task_name: str, in_path: str | Path, out_path: str | Path | None = None,
               field: str = "output") -> dict[str, Any]:
    """Score a JSONL file; malformed lines are quarantined and reported (file:line, field)."""
    from qr_ds.stages import refuse_overwrite

    task = get_task(task_name)
    in_path = Path(in_path)
    out = Path(out_path) if out_path else in_path.with_name(in_path.name.removesuffix(".jsonl") + ".scored.jsonl")
    refuse_overwrite({"--out": out}, {"FILE": in_path})
    report = load_jsonl(in_path, lambda rec: (example_of(task, rec, field), rec)[1])
    if not report.records:  # "0.00% (0/0)" with exit 0 reads as a result
        why = f"all {len(report.rejected)} lines refused (see {report.quarantine})" if report.rejected else "it is empty"
        raise ValueError(f"{in_path}: nothing to score: {why}")
    rows, summary = score_records(task, report.records, field)
    write_jsonl(out, rows)
    summary |= {"out": str(out), "rejected": len(report.rejected),
                "quarantine": str(report.quarantine) if report.quarantine else None}
    return summary
