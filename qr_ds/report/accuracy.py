"""Accuracy of the runs' final checkpoints from ``qr-ds eval`` outputs, and paired tests between runs.

An eval folder holds ``predictions.jsonl`` (one row per checkpoint x student x question, with
``correct``), ``adapters.json`` (which checkpoint folder each row's weights came from: that is how a
row is traced to its run) and ``summary.json`` (the accuracy table).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from qr_ds.report.runs import read_jsonl
from qr_ds.run_layout import RunDir
from qr_ds.report.stats import paired_comparison


@dataclass
class EvalOutputs:
    path: Path
    tasks: list[str]
    table: list[dict]  # summary.json rows
    predictions: list[dict]
    checkpoint_dirs: dict[str, Path] = field(default_factory=dict)  # row's checkpoint label -> folder


def load_eval(path: Path) -> EvalOutputs:
    for name in ("predictions.jsonl", "adapters.json", "summary.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"eval folder {path}: no {name} (written by `qr-ds eval --out {path}`)")
    summary = json.loads((path / "summary.json").read_text())
    served = json.loads((path / "adapters.json").read_text())
    # weights live at RUN/checkpoints/<step>/students/<name>/{adapter,model}
    dirs = {a["checkpoint"]: Path(a["path"]).resolve().parents[2] for a in served}
    return EvalOutputs(path, summary["tasks"], summary["rows"], read_jsonl(path / "predictions.jsonl"), dirs)


def evaluated_checkpoint(ev: EvalOutputs, run: Path) -> str | None:
    """The label of the run's checkpoint in this eval: its final one if evaluated, else its latest step."""
    mine = {label: d for label, d in ev.checkpoint_dirs.items() if d.parents[1] == run.resolve()}
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


def paired_tests(base: str, others: list[str], answers: dict[str, dict], students: dict[str, list[str]]) -> list[dict]:
    """``base`` run against each other run, per student the two share and per task they share questions on."""
    tests = []
    for other in others:
        for student in students[base]:
            if student not in students[other]:
                continue
            for (s, task), mine in answers[base].items():
                theirs = answers[other].get((s, task))
                if s != student or theirs is None:
                    continue
                result = paired_comparison(mine, theirs)
                if result is not None:
                    tests.append({"a": base, "b": other, "student": student, "task": task, **result})
    return tests
