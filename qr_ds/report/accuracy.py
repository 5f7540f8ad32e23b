"""Accuracy of the runs' final checkpoints from ``qr-ds eval`` outputs: per group of seeds, and each
group against the reference group on the same questions.

An eval folder holds ``predictions.jsonl`` (one row per checkpoint x student x question, with
``correct``), ``adapters.json`` (which checkpoint folder each row's weights came from: that is how a
row is traced to its run) and ``summary.json`` (the accuracy table).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qr_ds.report.groups import Group
from qr_ds.report.runs import Run, read_jsonl
from qr_ds.report.stats import SEEDS_AND_QUESTIONS, compare_groups, mcnemar_exact
from qr_ds.run_layout import CheckpointDir, RunDir

ALPHA = 0.05


@dataclass
class EvalOutputs:
    path: Path
    tasks: list[str]
    table: list[dict]  # summary.json rows
    predictions: list[dict]
    checkpoint_dirs: dict[str, CheckpointDir] = field(default_factory=dict)  # row's checkpoint label -> folder
    notes: list[str] = field(default_factory=list)  # what the eval says beside its table (the teacher's pool figure)


def load_eval(path: Path) -> EvalOutputs:
    for name in ("predictions.jsonl", "adapters.json", "summary.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"eval folder {path}: no {name} (written by `qr-ds eval --out {path}`)")
    summary = json.loads((path / "summary.json").read_text())
    served = json.loads((path / "adapters.json").read_text())
    dirs = {a["checkpoint"]: CheckpointDir.of_weights(Path(a["path"]).resolve()) for a in served}
    return EvalOutputs(path, summary["tasks"], summary["rows"], read_jsonl(path / "predictions.jsonl"), dirs,
                       summary.get("notes", []))


def evaluated_checkpoint(ev: EvalOutputs, run: Path) -> str | None:
    """The label of the run's checkpoint in this eval: its final one if evaluated, else its latest step."""
    mine = {label: d for label, d in ev.checkpoint_dirs.items() if d.run.root == run.resolve()}
    if not mine:
        return None
    final = RunDir(run).latest()
    for label, d in mine.items():
        if final is not None and d.name == final.name:
            return label
    return max(mine, key=lambda label: mine[label].name)


def question_key(row: dict) -> str:
    """Same task, id and gold answer: rows from two runs pair only on the very same question."""
    return f"{row['task']}\t{row['id']}\t{json.dumps(row['gold'], sort_keys=True)}"


def correctness(ev: EvalOutputs, checkpoint: str) -> dict[tuple[str, str], dict[str, bool]]:
    """(student, task) -> question key -> correct, for one checkpoint's rows."""
    out: dict[tuple[str, str], dict[str, bool]] = {}
    for row in ev.predictions:
        if row["checkpoint"] == checkpoint:
            out.setdefault((row["student"], row["task"]), {})[question_key(row)] = bool(row["correct"])
    return out


def relabelled_table(ev: EvalOutputs, labels: dict[str, str]) -> list[dict]:
    """The eval table with each checkpoint named by its run ("QR-Distill llama"); checkpoints of runs
    not in the report are left out, the teacher and zero-shot rows kept."""
    out = []
    for row in ev.table:
        if row["checkpoint"] in labels:
            out.append({**row, "method": f"{labels[row['checkpoint']]} {row['student']}"})
        elif row["checkpoint"] in ("teacher", "zero-shot"):
            out.append(row)
    return out


def collect_answers(runs: list[Run], evals: list[EvalOutputs], skipped: list[str]) -> dict[str, dict]:
    """Run label -> (student, task) -> question key -> correct, from each run's final evaluated
    checkpoint in every eval folder; a run in none of them is skipped, and said so."""
    answers: dict[str, dict] = {run.label: {} for run in runs}
    for ev in evals:
        for run in runs:
            ckpt = evaluated_checkpoint(ev, run.path)
            if ckpt is not None:
                answers[run.label].update(correctness(ev, ckpt))
    skipped += [f"accuracy of {label}: no checkpoint of it in the eval folders" for label, a in answers.items() if not a]
    return answers


def _matrix(runs: list[Run], answers: dict, cell: tuple[str, str], keys: list[str]) -> np.ndarray:
    return np.array([[answers[r.label][cell][k] for k in keys] for r in runs], dtype=bool)


def _shared(runs: list[Run], answers: dict, cell: tuple[str, str]) -> tuple[list[Run], list[str]]:
    """The runs evaluated on (student, task) and the questions all of them answered."""
    done = [r for r in runs if cell in answers[r.label]]
    keys = set.intersection(*(set(answers[r.label][cell]) for r in done)) if done else set()
    return done, sorted(keys)


def _cells(group: Group, answers: dict) -> list[tuple[str, str]]:
    return sorted({c for r in group.runs for c in answers[r.label] if c[0] in group.students})


def group_accuracy(group: Group, answers: dict) -> list[dict]:
    """Per student and task: mean and sd over the group's seeds of accuracy on the questions every seed answered."""
    rows = []
    for student, task in _cells(group, answers):
        runs, keys = _shared(group.runs, answers, (student, task))
        if keys:
            acc = _matrix(runs, answers, (student, task), keys).mean(-1)
            rows.append({"group": group.label, "student": student, "task": task, "seeds": len(runs),
                         "questions": len(keys), "mean": float(acc.mean()),
                         "sd": float(acc.std(ddof=1)) if len(runs) > 1 else None,
                         "per_seed": {str(r.seed): float(a) for r, a in zip(runs, acc)}})
    return rows


def compare(ref: Group, other: Group, answers: dict, budget: list[str]) -> list[dict]:
    """The reference group against another, per shared student and task, on the questions every seed
    of both answered; ``budget``: what makes their budgets unequal (empty when equal)."""
    out = []
    for cell in _cells(ref, answers):
        student, task = cell
        runs_a, runs_b = (_shared(g.runs, answers, cell)[0] for g in (ref, other))
        keys = _shared(runs_a + runs_b, answers, cell)[1]
        if student not in other.students or not runs_a or not runs_b or not keys:
            continue
        a, b = (_matrix(rs, answers, cell, keys) for rs in (runs_a, runs_b))
        res = compare_groups(a, b, ALPHA)
        t = {"a": ref.label, "b": other.label, "student": student, "task": task, "n": len(keys),
             "a_seeds": len(runs_a), "b_seeds": len(runs_b), "a_accuracy": float(a.mean()), "b_accuracy": float(b.mean()),
             "difference": float(res["difference"]), "ci95": [float(x) for x in res["ci"]], "p": float(res["p"]),
             "noise": res["noise"], "significant": res["noise"] == SEEDS_AND_QUESTIONS and bool(res["p"] < ALPHA),
             "budget": budget}
        if len(runs_a) == len(runs_b) == 1:  # one run each: McNemar's exact test, over the questions
            t["only_a_correct"], t["only_b_correct"] = int((a & ~b).sum()), int((~a & b).sum())
            t["mcnemar_p"] = mcnemar_exact(t["only_a_correct"], t["only_b_correct"])
        out.append(t)
    return out
