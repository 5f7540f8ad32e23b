"""`qr-ds eval` end to end on the transformers backend, and evaluation in the background of training."""
import json
import os
import threading
import time

import pytest

from evalkit import build_base, build_run, write_task_data, write_teacher_pool
from qr_ds.cli import main
from qr_ds.testing.builders import make_pool
from qr_ds.train.config import EvalDuringTraining
from qr_ds.train.evaluator import BackgroundEvaluator


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalcli")
    base = build_base(root / "base")
    run = build_run(root / "run", {"a": base, "b": base}, steps=[10, 20])
    _, teacher_acc = write_teacher_pool(run / "pool.jsonl", n=3)
    data = write_task_data(root / "syn.jsonl", n=3)
    return root, run, data, teacher_acc


def test_cli_writes_predictions_and_table1_summary(run, capsys):
    root, run_dir, data, teacher_acc = run
    out = root / "out"
    rc = main(["eval", "--run", str(run_dir), "--task", f"synthetic={data}", "--backend", "hf",
               "--max-new-tokens", "6", "--out", str(out)])
    assert rc == 0
    # the fixture's run trained on the very questions scored here (its config.yaml names the pool)
    assert (f"eval: warning: 3 of 3 questions of synthetic ({data}) are also in the training pool "
            f"{run_dir / 'pool.jsonl'}") in capsys.readouterr().err
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert {p["checkpoint"] for p in preds} == {"zero-shot", "step_000020"}  # latest only by default
    assert {"checkpoint", "student", "task", "id", "prompt", "output", "extracted", "gold", "correct",
            "logprob"} <= preds[0].keys()
    summary = json.loads((out / "summary.json").read_text())
    methods = [r["method"] for r in summary["rows"]]
    assert methods == ["Teacher (scripted, per path)", "Zero-shot a+b", "a @ step_000020", "b @ step_000020",
                       "ensemble-logprob @ step_000020", "ensemble-vote @ step_000020"]
    teacher = summary["rows"][0]["tasks"]["synthetic"]
    assert teacher["accuracy"] == teacher_acc and teacher["n"] == 6
    assert teacher["ci95"][0] < teacher_acc < teacher["ci95"][1]
    for r in summary["rows"][1:]:
        cell = r["tasks"]["synthetic"]
        assert cell["n"] == 3 and cell["correct"] == sum(
            p["correct"] for p in preds if (p["checkpoint"], p["student"]) == (r["checkpoint"], r["student"]))
    table = (out / "summary.md").read_text().splitlines()
    assert table[0] == "| Method | synthetic | Avg |" and table[2].startswith("| Teacher (scripted, per path) | 50.0 [")
    # two students: the rules differ only where the likelier one gave no answer, and the table says how often
    picks = {(p["student"], p["id"]): p["extracted"] for p in preds if p["student"].startswith("ensemble-")}
    differ = sum(picks[("ensemble-logprob", i)] != picks[("ensemble-vote", i)] for _, i in picks) // 2
    assert summary["ensembles_coincide"] == {"questions": 3, "differ": differ}
    assert f"they differ on {differ} of 3 (checkpoint, question) pairs" in (out / "summary.md").read_text()
    assert summary["teacher_pool_rows"] == []


def test_teacher_pool_on_other_questions_is_no_table_row(run, tmp_path):
    """A pool of training questions only (all correct after the filter): its accuracy is said apart,
    labelled as what it is, never as a row beside the test scores."""
    root, run_dir, data, _ = run
    pool = make_pool(tmp_path / "pool", n_questions=2)  # synthetic seed 0: other questions than seed 7's
    out = tmp_path / "out"
    assert main(["eval", "--run", str(run_dir), "--task", f"synthetic={data}", "--backend", "hf", "--limit", "1",
                 "--max-new-tokens", "2", "--no-zero-shot", "--teacher-pool", str(pool), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert not any(r["checkpoint"] == "teacher" for r in summary["rows"])
    (pooled,) = summary["teacher_pool_rows"]
    assert pooled["tasks"]["synthetic"]["n"] == 12 and pooled["tasks"]["synthetic"]["accuracy"] == 1.0
    md = (out / "summary.md").read_text()
    assert "Teacher" not in md.split("\n\n")[0]  # not in the table
    assert "Not a test score: the teacher (scripted-teacher) has no path on these test questions" in md
    assert "synthetic 100.0% of 12 paths" in md


def test_cli_reports_bad_input_by_name(run, capsys):
    root, run_dir, data, _ = run
    assert main(["eval", "--run", str(run_dir), "--task", "nosuchtask=x.jsonl", "--backend", "hf"]) == 2
    assert "unknown task 'nosuchtask'" in capsys.readouterr().err
    assert main(["eval", "--run", str(root / "nowhere"), "--task", f"synthetic={data}"]) == 2
    assert "no checkpoints/ folder" in capsys.readouterr().err


# Put on an evaluation process's PYTHONPATH: holds it at startup until the test creates the gate file.
GATE = """import os, time
gate = os.environ.get("QR_TEST_EVAL_GATE")
while gate and not os.path.exists(gate):
    time.sleep(0.05)
"""


@pytest.mark.slow  # two `qr-ds eval` processes, each loading torch and two students
def test_background_evaluator_hands_off_without_waiting_and_reports_through_poll(run, tmp_path, monkeypatch):
    """Every evaluation process is held at a gate until the three submits have returned: a submit that
    waited on its evaluation would never return (no timing involved)."""
    root, run_dir, data, _ = run
    site, gate = tmp_path / "site", tmp_path / "gate"
    site.mkdir()
    (site / "sitecustomize.py").write_text(GATE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("QR_TEST_EVAL_GATE", str(gate))
    logs = []
    ev = BackgroundEvaluator(EvalDuringTraining(every_steps=10, tasks={"synthetic": str(data)}, backend="hf",
                                                max_new_tokens=4, limit=2), tmp_path / "evals", log=logs.append)
    ckpts = run_dir / "checkpoints"

    def submit_three():
        ev.submit(ckpts / "step_000010", 10)
        ev.submit(ckpts / "step_000020", 20)  # busy: waits
        ev.submit(ckpts / "step_000020", 30)  # supersedes the waiting one, which is skipped

    submitter = threading.Thread(target=submit_three, daemon=True)
    submitter.start()
    submitter.join(timeout=60)  # a generous bound on starting one process
    try:
        assert not submitter.is_alive(), "submit() waited on an evaluation"
        assert [j.step for j in ev.running] == [10] and ev.running[0].proc.poll() is None  # held at the gate
        assert ev.pending.step == 30 and any("skipping step 20" in m for m in logs)
    finally:
        gate.touch()
    results, deadline = [], time.monotonic() + 240
    while len(results) < 2 and time.monotonic() < deadline:
        results += ev.poll()
        time.sleep(0.5)
    ev.close()
    assert [r["step"] for r in results] == [10, 30], results
    for r in results:
        assert r["returncode"] == 0 and set(r["accuracy"]) == {"a/synthetic", "b/synthetic",
                                                                "ensemble-logprob/synthetic", "ensemble-vote/synthetic"}
    assert (tmp_path / "evals/step_000030/summary.md").is_file()
    # a resumed finished run saves its last step again: not evaluated again (its folder holds the results)
    again = BackgroundEvaluator(ev.cfg, tmp_path / "evals", log=logs.append)
    again.submit(ckpts / "step_000020", 30)
    assert again.running == [] and again.pending is None and any("step 30 was evaluated before" in m for m in logs)
    other = BackgroundEvaluator(EvalDuringTraining(tasks={"gsm8k": str(data)}, backend="hf"), tmp_path / "evals",
                                log=logs.append)  # a resume that changed eval.tasks: scored again, the old kept
    other.submit(ckpts / "step_000020", 30)
    other.close(wait=False)
    assert len(other.running) == 0 and list(tmp_path.glob("evals/step_000030.replaced-*/summary.md"))


def test_background_evaluator_close_terminates_running_evaluation(run, tmp_path):
    root, run_dir, data, _ = run
    ev = BackgroundEvaluator(EvalDuringTraining(tasks={"synthetic": str(data)}, backend="hf"), tmp_path / "e",
                             log=lambda m: None)
    ev.submit(run_dir / "checkpoints" / "step_000010", 10)
    proc = ev.running[0].proc
    ev.close(wait=False)
    assert proc.poll() is not None and ev.running == []


@pytest.mark.parametrize("name", ["eval-synthetic.yaml", "eval-paper.yaml", "eval-paper-gsm8k.yaml"])
def test_shipped_eval_configs_load(name):
    from pathlib import Path

    from qr_ds.config import load_config
    from qr_ds.eval.config import EvalConfig
    from qr_ds.train.config import TrainConfig

    root = Path(__file__).parents[1]
    cfg = load_config(EvalConfig, root / "configs" / name)
    assert cfg.tasks and cfg.run_dir is not None
    if name.startswith("eval-paper"):  # one task's run, as the paper config writes it, on that task's test part
        (task, data), = cfg.tasks.items()
        assert cfg.dtype == "bfloat16" and cfg.max_new_tokens >= 1024
        assert data == f"data/{task}/test.jsonl" and cfg.run_dir == Path(f"runs/{task}/qr_distill")
        if name == "eval-paper.yaml":
            train = load_config(TrainConfig, root / "configs" / "paper-mistral-gemma.yaml")
            assert cfg.run_dir == train.output_dir
