"""`qr-ds report` over two small runs built from real parts: an embedded pool (qr_ds.testing), a router
checkpoint saved from a real RoutingPolicy, the filter's retention table, eval outputs with chosen
per-question correctness, and metrics rows in the trainer's layout."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from qr_ds.cli import main
from qr_ds.config import from_dict, to_dict
from qr_ds.data.pool import JudgeVerdict, load_pool, write_pool
from qr_ds.data.styles import STYLES
from qr_ds.embed.lookup import gather_embeddings
from qr_ds.eval.scoring import summarize
from qr_ds.filter.run import STAND_IN, retention_table
from qr_ds.report import figures
from qr_ds.report.runs import load_run
from qr_ds.report.stats import mcnemar_exact, paired_bootstrap_ci
from qr_ds.routing.policy import RoutingPolicy
from qr_ds.run_layout import RunDir
from qr_ds.testing import make_pool
from qr_ds.train.config import TrainConfig

STUDENTS = ("llama", "qwen")
STEPS = 12
N_QUESTIONS = 20
# llama: A alone right on 9 questions, B alone on 1, both on 5, neither on 5; qwen: identical answers
LLAMA = {"A": [1] * 9 + [0] + [1] * 5 + [0] * 5, "B": [0] * 9 + [1] + [1] * 5 + [0] * 5}
QWEN = [1, 0] * 10


def test_mcnemar_exact_against_hand_computation():
    # 10 discordant pairs split 9:1: P(X <= 1 | Bin(10, 1/2)) = 11/1024, doubled
    assert mcnemar_exact(9, 1) == pytest.approx(22 / 1024) == pytest.approx(0.0215, abs=1e-4)
    assert mcnemar_exact(1, 9) == mcnemar_exact(9, 1)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0


def test_paired_bootstrap_interval():
    lo, hi = paired_bootstrap_ci([bool(x) for x in LLAMA["A"]], [bool(x) for x in LLAMA["B"]])
    assert lo < 0.4 < hi and lo > 0  # the difference is 8/20; 9:1 discordant keeps the interval above 0
    assert paired_bootstrap_ci([True, False] * 5, [True, False] * 5) == (0.0, 0.0)


def metrics_row(step: int, rng: np.random.Generator, offset: float) -> dict:
    """One row as qr_ds/train/metrics.py writes it (the keys the report reads)."""
    row = {"step": step, "epoch": 0, "step_s": 0.5, "exchange_s": 0.05, "tokens_per_s": 1000.0,
           "peak_mem_GiB": 1.0, "mutual_loss": 0.3 / step, "router/entropy": 0.69 - 0.01 * step}
    for s in STUDENTS:
        row[f"sft_loss/{s}"] = offset + 3.0 / step + 0.1 * rng.random()
        row[f"tokens_per_s/{s}"] = 500.0
        row[f"routed/{s}"] = 0.5 + 0.02 * rng.standard_normal()
        row[f"route_rate/{s}"] = {st: [1, 2] for st in STYLES}
        row[f"style_nats_per_char/{s}"] = {st: [(1 + k) / step, 2] for k, st in enumerate(STYLES)}
    return row


def make_run(root: Path, pool: Path, seed: int, offset: float) -> Path:
    cfg = from_dict(TrainConfig, {"students": [{"name": s, "model": str(root / s)} for s in STUDENTS],
                                  "data": {"pool": str(pool)}, "router": {"hidden": 8}, "seed": seed,
                                  "output_dir": str(root)})
    layout = RunDir(root)
    root.mkdir(parents=True)
    layout.config.write_text(yaml.safe_dump(to_dict(cfg)))
    ckpt = layout.checkpoint(STEPS)
    ckpt.path.mkdir(parents=True)
    policy = RoutingPolicy(cfg.router, 16, len(STUDENTS), cfg.lambda1, seed)
    torch.save(policy.state_dict(), ckpt.component("router"))
    ckpt.meta.write_text(json.dumps({"step": STEPS, "students": [{"name": s, "model": str(root / s)} for s in STUDENTS]}))
    layout.set_latest(ckpt)
    rng = np.random.default_rng(seed)
    layout.metrics.write_text("".join(json.dumps(metrics_row(t, rng, offset)) + "\n" for t in range(1, STEPS + 1)))
    layout.eval_log.write_text("".join(json.dumps({"step": t, "accuracy": {f"{s}/synthetic": 0.1 * t / 4 + offset / 10
                                                                          for s in STUDENTS}}) + "\n" for t in (4, 8, 12)))
    return root


def write_eval(out: Path, runs: dict[str, Path]) -> Path:
    """A `qr-ds eval` folder over both runs' final checkpoints, with the correctness chosen above."""
    rows, served = [], []
    for name, run in runs.items():
        ckpt = RunDir(run).require_latest()
        for s in STUDENTS:
            label = f"{name}/{ckpt.name}"  # how eval names rows of two runs' same step
            served.append({"checkpoint": label, "student": s, "full": True, "path": str(ckpt.weights(s, "full"))})
            answers = LLAMA[name] if s == "llama" else QWEN
            rows += [{"checkpoint": label, "student": s, "task": "synthetic", "id": f"q{i}", "gold": str(i),
                      "correct": bool(c)} for i, c in enumerate(answers)]
    out.mkdir()
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "adapters.json").write_text(json.dumps(served))
    (out / "summary.json").write_text(json.dumps({"tasks": ["synthetic"], "rows": summarize(rows, ["synthetic"])}))
    return out


def write_retention(data: Path, pool: Path) -> Path:
    """The filter's outputs: generated pool, filtered pool beside <filtered>.retention.json."""
    records = load_pool(pool).records
    for r in records[len(records) // 2:]:
        r.judge = JudgeVerdict("INVALID", "scripted")
    write_pool(data / "filtered.jsonl", records[: len(records) // 2])
    path = data / "filtered.retention.json"
    path.write_text(json.dumps({"pool": str(pool), "judged_by": STAND_IN,
                                "rows": retention_table(records, True, False)}))
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    pool = make_pool(tmp / "pool", n_questions=8, emb_dim=16)
    runs = {"A": make_run(tmp / "run_a", pool, seed=0, offset=0.5), "B": make_run(tmp / "run_b", pool, seed=1, offset=1.0)}
    ev = write_eval(tmp / "eval", runs)
    retention = write_retention(tmp / "pool", pool)
    out = tmp / "out"
    assert main(["report", f"A={runs['A']}", f"B={runs['B']}", "--out", str(out), "--eval", str(ev),
                 "--retention", str(retention)]) == 0
    return {"out": out, "runs": runs, "pool": pool, "json": json.loads((out / "report.json").read_text()),
            "md": (out / "report.md").read_text()}


def test_paired_tests_in_report(report):
    tests = {t["student"]: t for t in report["json"]["accuracy"]["paired_tests"]}
    assert set(tests) == set(STUDENTS)
    llama, qwen = tests["llama"], tests["qwen"]
    assert (llama["a"], llama["b"], llama["n"]) == ("A", "B", N_QUESTIONS)
    assert (llama["only_a_correct"], llama["only_b_correct"]) == (9, 1)
    assert llama["mcnemar_p"] == pytest.approx(22 / 1024) and llama["significant"]
    assert qwen["mcnemar_p"] == 1.0 and not qwen["significant"] and qwen["bootstrap_ci95"] == [0.0, 0.0]
    assert "qwen, synthetic: **no significant difference** between A and B" in report["md"]
    assert "A llama" in report["md"] and "B qwen" in report["md"]  # accuracy rows named by run


def test_routing_table_is_final_router_over_pool(report):
    records = load_pool(report["pool"]).records
    emb = torch.from_numpy(gather_embeddings(report["pool"], records))
    for label, seed in (("A", 0), ("B", 1)):
        cfg = from_dict(TrainConfig, yaml.safe_load(RunDir(report["runs"][label]).config.read_text()))
        policy = RoutingPolicy(cfg.router, 16, len(STUDENTS), cfg.lambda1, seed)
        policy.load_state_dict(torch.load(RunDir(report["runs"][label]).require_latest().component("router"),
                                          weights_only=True))
        probs = policy.probabilities(emb)
        table = report["json"]["routing"][label]["style"]
        for s, student in enumerate(STUDENTS):
            for style in STYLES:
                rows = [i for i, r in enumerate(records) if r.style == style]
                cell = table[student][style]
                assert cell["paths"] == len(rows) == 8
                assert cell["mean_probability"] == pytest.approx(probs[rows, s].mean().item(), abs=1e-6)
        levels = report["json"]["routing"][label]["level"]["llama"]
        assert sum(c["paths"] for c in levels.values()) == len(records)


def test_figures_written(report):
    figs = report["json"]["figures"]
    assert {"loss", "eval_curve", "router_training", "routing_style_run_a", "routing_level_run_b",
            "style_loss_run_a", "retention_style", "retention_level"} <= set(figs)
    for name in figs.values():
        assert (report["out"] / name).stat().st_size > 1000
        assert f"]({name})" in report["md"]


def test_retention_names_judge(report):
    ret = report["json"]["retention"]
    assert ret["judged_by"] == STAND_IN and f"Judged by: **{STAND_IN}**" in report["md"]
    assert sum(r["kept"] for r in ret["per_level"]) == 24 and sum(r["paths"] for r in ret["per_level"]) == 48
    assert ret["per_style"][-1] == {"name": "all", "paths": 48, "correct": 48, "kept": 24, "kept_rate": 0.5}


def test_loss_figure_overlays_runs(report, tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig) or path)
    runs = [load_run(label, path) for label, path in report["runs"].items()]
    figures.plot_losses(runs, tmp_path / "loss.png")
    panels = drawn[0].axes
    assert [ax.get_title() for ax in panels] == ["SFT loss: llama", "SFT loss: qwen", "mutual loss"]
    for ax in panels:
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["A", "B"]


def test_cli_refuses_bad_runs(report, tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    same = report["runs"]["A"]
    assert main(["report", f"X={same}", f"X={report['runs']['B']}", "--out", str(tmp_path / "o")]) == 2
    assert "share a label" in capsys.readouterr().err
