"""launch/table1.py joins the five tasks' evaluations into Table 1 rows by method, with the paper's Avg
only where every task has a number, and runs nothing for a task whose evaluation is done."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("table1", ROOT / "launch" / "table1.py")
table1 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(table1)


def summary(task: str, accuracy: float) -> dict:
    cell = {"accuracy": accuracy, "ci95": [0.0, 1.0], "correct": 1, "n": 2}
    return {"tasks": [task], "rows": [
        {"method": f"mistral @ step_{len(task):06d}", "checkpoint": f"step_{len(task):06d}", "student": "mistral",
         "tasks": {task: cell}},
        {"method": "Zero-shot gemma+mistral", "checkpoint": "zero-shot", "student": "gemma+mistral",
         "tasks": {task: {**cell, "accuracy": accuracy / 2}}}]}


def test_rows_join_across_tasks_and_avg_needs_all_five(tmp_path, monkeypatch, capsys):
    accs = dict(zip(table1.TASKS, (0.5, 0.6, 0.2, 0.4, 0.8)))
    merged = {r["method"]: r for r in table1.merge({t: summary(t, a) for t, a in accs.items()})}
    assert set(merged) == {"mistral", "Zero-shot gemma+mistral"}  # one row a method, whatever each run's step
    assert abs(merged["mistral"]["avg"] - 0.5) < 1e-12 and abs(merged["Zero-shot gemma+mistral"]["avg"] - 0.25) < 1e-12

    monkeypatch.chdir(tmp_path)
    for task in list(accs)[:4]:  # four tasks evaluated: merged, no Avg, the fifth named
        (tmp_path / f"runs/{task}/eval").mkdir(parents=True)
        (tmp_path / f"runs/{task}/eval/summary.json").write_text(json.dumps(summary(task, accs[task])))
    assert table1.main(["--merge-only"]) == 0
    saved = json.loads((tmp_path / "runs/table1.json").read_text())
    assert saved["missing"] == ["date_understanding"] and all(r["avg"] is None for r in saved["rows"])
    assert "Not evaluated yet: date_understanding (no Avg)" in (tmp_path / "runs/table1.md").read_text()


def test_each_task_trains_with_the_paper_config_and_its_own_paths():
    train, evaluate = table1.task_commands("math", "hostfile")
    assert train[3:] == ["train", "--config", "configs/paper-mistral-gemma.yaml", "--hostfile", "hostfile", "--resume",
                         "auto", "data.pool=runs/math/embedded.jsonl", "output_dir=runs/math/qr_distill",
                         "eval.tasks={math: data/math/dev.jsonl}", "epochs=3"]
    assert evaluate[-7:] == ["--run", "runs/math/qr_distill", "--task", "math=data/math/test.jsonl",
                             "--out", "runs/math/eval", "--overwrite"]
