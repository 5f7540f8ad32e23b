"""`qr-ds report` over groups of small runs built from real parts: an embedded pool (qr_ds.testing.builders),
router checkpoints saved from a real RoutingPolicy, the filter's retention table, eval outputs with
chosen per-question correctness, and metrics rows in the trainer's layout.

Group A: seeds 0, 1, 2 trained 12 steps; group B: seeds 0, 1, 2 trained 16 steps (an unequal budget
the report must flag). llama: A right on 15/16/15 of 20 questions, B on 5/4/5 (a real effect);
qwen: A on 18/2/10, B on 10/12/8 (the same mean, seeds all over the place)."""
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
from qr_ds.report.build import build_report
from qr_ds.report.command import parse_group
from qr_ds.report.groups import load_groups
from qr_ds.report.stats import mcnemar_exact
from qr_ds.routing.policy import RoutingPolicy
from qr_ds.run_layout import RunDir
from qr_ds.testing.builders import make_pool
from qr_ds.train.config import TrainConfig

STUDENTS = ("llama", "qwen")
N_QUESTIONS = 20
STEPS = {"a": 12, "b": 16}
RIGHT = {"llama": {"a": (15, 16, 15), "b": (5, 4, 5)}, "qwen": {"a": (18, 2, 10), "b": (10, 12, 8)}}
PATHS_PER_STEP = 2 * len(STYLES)  # each metrics row counts 2 paths per style


def test_mcnemar_exact_against_hand_computation():
    # 10 discordant pairs split 9:1: P(X <= 1 | Bin(10, 1/2)) = 11/1024, doubled
    assert mcnemar_exact(9, 1) == pytest.approx(22 / 1024) == pytest.approx(0.0215, abs=1e-4)
    assert mcnemar_exact(1, 9) == mcnemar_exact(9, 1)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0


def metrics_row(step: int, rng: np.random.Generator, offset: float) -> dict:
    """One row as qr_ds/train/metrics.py writes it (the keys the report reads)."""
    row = {"step": step, "epoch": 0, "step_s": 0.5, "exchange_s": 0.05, "tokens_per_s": 1000.0,
           "peak_mem_GiB": 1.0, "mutual_loss": 0.3 / step, "router/entropy": 0.69 - 0.01 * step}
    for s in STUDENTS:
        row[f"sft_loss/{s}"] = offset + 3.0 / step + 0.1 * rng.random()
        row[f"tokens_per_s/{s}"] = 500.0
        row[f"compute_s/{s}"] = 0.1 * step  # 50 * step tokens
        row[f"routed/{s}"] = 0.5 + 0.02 * rng.standard_normal()
        row[f"route_rate/{s}"] = {st: [1, 2] for st in STYLES}
        row[f"style_nats_per_char/{s}"] = {st: [(1 + k) / step, 2] for k, st in enumerate(STYLES)}
    return row


def make_run(root: Path, pool: Path, seed: int, steps: int, offset: float, evals: str = "ok", **over) -> Path:
    cfg = from_dict(TrainConfig, {"students": [{"name": s, "model": str(root.parent / s)} for s in STUDENTS],
                                  "data": {"pool": str(pool)}, "router": {"hidden": 8}, "seed": seed,
                                  "max_steps": steps, "output_dir": str(root), **over})
    layout = RunDir(root)
    root.mkdir(parents=True)
    layout.config.write_text(yaml.safe_dump(to_dict(cfg)))
    ckpt = layout.checkpoint(steps)
    ckpt.path.mkdir(parents=True)
    policy = RoutingPolicy(cfg.router, 16, len(STUDENTS), cfg.lambda1, seed + int(10 * offset),
                           pool_sample=torch.randn(64, 16))
    torch.save(policy.state_dict(), ckpt.component("router"))
    ckpt.meta.write_text(json.dumps({"step": steps, "students": [{"name": s, "model": "m"} for s in STUDENTS]}))
    layout.set_latest(ckpt)
    rng = np.random.default_rng(seed)
    layout.metrics.write_text("".join(json.dumps(metrics_row(t, rng, offset)) + "\n" for t in range(1, steps + 1)))
    good = [{"step": t, "accuracy": {f"{s}/synthetic": 0.1 * t / 4 + offset / 10 for s in STUDENTS}} for t in (4, 8)]
    failed = [{"step": 6, "checkpoint": str(ckpt.path), "out": str(root / "eval" / "step_000006"), "returncode": 1,
               "error": "Traceback: boom"}]
    layout.eval_log.write_text("".join(json.dumps(e) + "\n" for e in {"ok": good, "failed": failed,
                                                                       "both": good + failed}[evals]))
    return root


def write_eval(out: Path, runs: dict[str, Path]) -> Path:
    """A `qr-ds eval` folder over the runs' final checkpoints, with the correctness chosen above."""
    rows, served = [], []
    for name, run in runs.items():
        ckpt = RunDir(run).require_latest()
        for s in STUDENTS:
            label = f"{run.name}/{ckpt.name}"  # how eval names rows of several runs' same step
            served.append({"checkpoint": label, "student": s, "full": True, "path": str(ckpt.weights(s, "full"))})
            right = RIGHT[s][name[0]][int(name[1])]
            rows += [{"checkpoint": label, "student": s, "task": "synthetic", "id": f"q{i}", "gold": str(i),
                      "correct": i < right} for i in range(N_QUESTIONS)]
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
def built(tmp_path_factory):
    """Six runs (a0-a2, b0-b2) and their eval folder."""
    tmp = tmp_path_factory.mktemp("report")
    pool = make_pool(tmp / "pool", n_questions=8, emb_dim=16)
    runs = {f"{g}{i}": make_run(tmp / "runs" / f"{g}{i}", pool, seed=i, steps=STEPS[g], offset=0.5 + (g == "b"),
                                evals="both" if f"{g}{i}" == "a1" else "ok")
            for g in "ab" for i in range(3)}
    return {"tmp": tmp, "pool": pool, "runs": runs, "eval": write_eval(tmp / "eval", runs)}


@pytest.fixture(scope="module")
def report(built):
    out, root = built["tmp"] / "out", built["tmp"] / "runs"
    assert main(["report", f"A={root}/a*", f"B={root}/b*", "--out", str(out), "--eval", str(built["eval"]),
                 "--retention", str(write_retention(built["tmp"] / "pool", built["pool"]))]) == 0
    return {"out": out, **built, "json": json.loads((out / "report.json").read_text()),
            "md": (out / "report.md").read_text()}


def test_parse_group(tmp_path):
    for name in ("qr_s0", "qr_s1", "other"):
        (tmp_path / name).mkdir()
    assert parse_group(f"qr={tmp_path}/qr_s*") == ("qr", [tmp_path / "qr_s0", tmp_path / "qr_s1"])
    assert parse_group(f"X={tmp_path}/other") == ("X", [tmp_path / "other"])
    assert parse_group(str(tmp_path / "other")) == ("other", [tmp_path / "other"])
    with pytest.raises(ValueError, match="without a label"):
        parse_group(f"{tmp_path}/qr_s*")
    with pytest.raises(FileNotFoundError, match="matches no run folder"):
        parse_group(f"qr={tmp_path}/nothing_*")


def test_groups_hold_the_seeds(report):
    groups = report["json"]["groups"]
    assert list(groups) == ["A", "B"] and groups["A"]["seeds"] == [0, 1, 2]
    assert set(report["json"]["runs"]) == {f"{g} seed {i}" for g in "AB" for i in range(3)}


def test_budgets_and_unequal_budget_flag(report):
    budgets = report["json"]["budgets"]
    for g in "AB":
        b = budgets[g]
        steps = STEPS[g.lower()]
        assert b["steps"] == [steps] and b["paths_per_step"] == [PATHS_PER_STEP]
        assert b["tokens"]["llama"] == {"mean": 50 * steps * (steps + 1) / 2, "min": 50 * steps * (steps + 1) // 2,
                                        "max": 50 * steps * (steps + 1) // 2}
    assert budgets["A"]["flags"] == []
    assert budgets["B"]["flags"] == ["unequal budget: 16 vs 12 steps (A)"]
    assert "**unequal budget: 16 vs 12 steps (A)**" in report["md"]
    assert all(t["budget"] == ["unequal budget: 16 vs 12 steps (A)"] for t in report["json"]["accuracy"]["paired_tests"])


def test_accuracy_mean_and_sd_over_seeds(report):
    rows = {(r["group"], r["student"]): r for r in report["json"]["accuracy"]["groups"]}
    for (g, s), r in rows.items():
        acc = np.array(RIGHT[s][g.lower()]) / N_QUESTIONS
        assert (r["seeds"], r["questions"]) == (3, N_QUESTIONS)
        assert r["mean"] == pytest.approx(acc.mean()) and r["sd"] == pytest.approx(acc.std(ddof=1))
        assert r["per_seed"] == {str(i): pytest.approx(a) for i, a in enumerate(acc)}
    assert "| A | qwen | synthetic | 3 | 20 | 50.0 ± 40.0 | 0: 90.0, 1: 10.0, 2: 50.0 |" in report["md"]


def test_effects_cover_seeds_and_questions(report):
    tests = {t["student"]: t for t in report["json"]["accuracy"]["paired_tests"]}
    llama, qwen = tests["llama"], tests["qwen"]
    for t in tests.values():
        assert (t["a"], t["b"], t["n"], t["a_seeds"], t["b_seeds"]) == ("A", "B", N_QUESTIONS, 3, 3)
        assert t["noise"] == "seeds and questions" and "mcnemar_p" not in t
        assert t["ci95"][0] <= t["difference"] <= t["ci95"][1]
        assert t["significant"] == (t["p"] < 0.05) == (t["ci95"][0] > 0 or t["ci95"][1] < 0)
    assert llama["difference"] == pytest.approx((46 - 14) / 60) and llama["significant"]
    assert qwen["difference"] == 0 and not qwen["significant"] and qwen["p"] == pytest.approx(1.0)
    # qwen's seeds spread +-40 points: the interval must be far wider than one run's question noise
    assert qwen["ci95"][1] - qwen["ci95"][0] > 0.5
    assert "- llama, synthetic: **A** is more accurate" in report["md"]
    assert "- qwen, synthetic: **no significant difference** between A and B" in report["md"]


def test_routing_per_seed_and_across_seeds(report):
    records = load_pool(report["pool"]).records
    emb = torch.from_numpy(gather_embeddings(report["pool"], records))
    routing = report["json"]["routing"]["A"]
    per_seed = []
    for i in range(3):
        layout = RunDir(report["runs"][f"a{i}"])
        cfg = from_dict(TrainConfig, yaml.safe_load(layout.config.read_text()))
        policy = RoutingPolicy(cfg.router, 16, len(STUDENTS), cfg.lambda1, 0, pool_sample=torch.randn(64, 16))
        policy.load_state_dict(torch.load(layout.require_latest().component("router"), weights_only=True))
        probs = policy.probabilities(emb)
        table = routing["runs"][f"A seed {i}"]["style"]
        for s, student in enumerate(STUDENTS):
            for style in STYLES:
                rows = [k for k, r in enumerate(records) if r.style == style]
                assert table[student][style]["paths"] == len(rows) == 8
                assert table[student][style]["mean_probability"] == pytest.approx(probs[rows, s].mean().item(), abs=1e-6)
        per_seed.append(table)
    for student in STUDENTS:
        for style in STYLES:
            values = [t[student][style]["mean_probability"] for t in per_seed]
            cell = routing["style"][student][style]
            assert cell["mean_probability"] == pytest.approx(np.mean(values)) and cell["seeds"] == 3
            assert (cell["min"], cell["max"]) == (min(values), max(values))
            assert cell["sd"] == pytest.approx(np.std(values, ddof=1))
    assert sum(c["paths"] for c in routing["level"]["llama"].values()) == len(records) == routing["paths"]


def test_figures_written(report):
    figs = report["json"]["figures"]
    assert {"loss", "eval_curve", "router_training", "routing_style_a", "routing_level_b", "style_loss_a",
            "retention_style", "retention_level"} <= set(figs)
    for name in figs.values():
        assert (report["out"] / name).stat().st_size > 1000
        assert f"]({name})" in report["md"]


def test_failed_evaluation_is_skipped_and_said(report):
    skipped = report["json"]["skipped"]
    assert len(skipped) == 1 and "A seed 1 at step 6: no accuracy (returncode 1" in skipped[0]
    assert "## Skipped" in report["md"] and skipped[0] in report["md"]


def test_retention_names_judge(report):
    ret = report["json"]["retention"]
    assert ret["judged_by"] == STAND_IN and f"Judged by: **{STAND_IN}**" in report["md"]
    assert sum(r["kept"] for r in ret["per_level"]) == 24 and sum(r["paths"] for r in ret["per_level"]) == 48
    assert ret["per_style"][-1] == {"name": "all", "paths": 48, "correct": 48, "kept": 24, "kept_rate": 0.5}


def test_loss_figure_names_each_group_once(report, monkeypatch, tmp_path):
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig) or path)
    groups = load_groups({"A": [report["runs"][f"a{i}"] for i in range(3)], "B": [report["runs"]["b0"]]})
    figures.plot_losses(groups, tmp_path / "loss.png")
    panels = drawn[0].axes
    assert [ax.get_title() for ax in panels] == ["SFT loss: llama", "SFT loss: qwen", "mutual loss"]
    for ax in panels:
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["A", "B"]
        assert len(ax.get_lines()) == 2 * 4  # faint + smoothed line per run


def test_one_run_per_group_is_questions_only(built, tmp_path):
    """The demo's call: label -> one run folder. McNemar survives, labelled questions only; a run whose
    evaluations during training all failed loses its curve, not the report."""
    lone = make_run(tmp_path / "c0", built["pool"], seed=0, steps=12, offset=0.5, evals="failed")
    build_report(tmp_path / "out", {"A": built["runs"]["a0"], "C": lone}, [built["eval"]])
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["accuracy"]["paired_tests"] == []  # C is not in the eval folder
    assert "accuracy of C: no checkpoint of it in the eval folders" in data["skipped"]
    assert "eval_curve" in data["figures"]  # A's evaluations still drawn
    build_report(tmp_path / "out1", {"C": lone})  # no evaluation with an accuracy at all: no curve, no crash
    data = json.loads((tmp_path / "out1" / "report.json").read_text())
    assert "eval_curve" not in data["figures"] and {"loss", "routing_style_c"} <= set(data["figures"])
    assert any("C at step 6: no accuracy" in s for s in data["skipped"])

    build_report(tmp_path / "out2", {"A": built["runs"]["a0"], "B": built["runs"]["b0"]}, [built["eval"]])
    data = json.loads((tmp_path / "out2" / "report.json").read_text())
    text = (tmp_path / "out2" / "report.md").read_text()
    llama = {t["student"]: t for t in data["accuracy"]["paired_tests"]}["llama"]
    assert (llama["only_a_correct"], llama["only_b_correct"]) == (10, 0)
    assert llama["mcnemar_p"] == pytest.approx(2 / 1024) and llama["noise"] == "questions only"
    assert not llama["significant"]  # one run per group says nothing about the method
    assert "- llama, synthetic: **questions only**" in text and "no training-noise estimate" in text
    assert "A llama" in text and "B qwen" in text  # per-run accuracy rows named by run
    assert "| A | 1: 0 |" in text  # one run, of seed 0 (a bare "0" under "seeds" read as no seeds)


def test_cli_refuses_bad_groups(report, tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    a0, b0 = report["runs"]["a0"], report["runs"]["b0"]
    assert main(["report", f"X={a0}", f"X={b0}", "--out", str(tmp_path / "o")]) == 2
    assert "share a label" in capsys.readouterr().err
    # a0 and b0 are both seed 0
    assert main(["report", f"X={report['tmp']}/runs/[ab]0", "--out", str(tmp_path / "o")]) == 2
    assert "both have seed 0" in capsys.readouterr().err
    make_run(tmp_path / "mix" / "r1", report["pool"], seed=1, steps=12, offset=0.5)
    make_run(tmp_path / "mix" / "r2", report["pool"], seed=2, steps=12, offset=0.5, lambda1=0.5)
    assert main(["report", f"X={tmp_path}/mix/r*", "--out", str(tmp_path / "o")]) == 2
    assert "r2 differs from" in capsys.readouterr().err
    with pytest.raises(ValueError, match="in lambda1; the runs of a group may differ only in output_dir, run_name, "
                                         "seed "):
        load_groups({"X": [tmp_path / "mix" / "r1", tmp_path / "mix" / "r2"]})
    # each seed's run_name (the launcher's, from its config file's stem) labels it, as output_dir does
    make_run(tmp_path / "named" / "r1", report["pool"], seed=1, steps=12, offset=0.5, run_name="x_s1")
    make_run(tmp_path / "named" / "r2", report["pool"], seed=2, steps=12, offset=0.5, run_name="x_s2")
    assert len(load_groups({"X": [tmp_path / "named" / "r1", tmp_path / "named" / "r2"]})[0].runs) == 2
    # a key every seed sets on purpose is allowed by name, and only that key
    assert len(load_groups({"X": [tmp_path / "mix" / "r1", tmp_path / "mix" / "r2"]}, ("lambda1",))[0].runs) == 2
    with pytest.raises(ValueError, match="in lambda1;"):
        load_groups({"X": [tmp_path / "mix" / "r1", tmp_path / "mix" / "r2"]}, ("students[].model",))
    # a pool that moved with its checkout is the same input; one with other bytes is not
    moved = tmp_path / "moved" / "pool.jsonl"
    moved.parent.mkdir()
    moved.write_bytes(Path(report["pool"]).read_bytes())
    make_run(tmp_path / "mv" / "r1", report["pool"], seed=1, steps=12, offset=0.5)
    make_run(tmp_path / "mv" / "r2", moved, seed=2, steps=12, offset=0.5)
    assert len(load_groups({"X": [tmp_path / "mv" / "r1", tmp_path / "mv" / "r2"]})[0].runs) == 2
    moved.write_bytes(moved.read_bytes() + b"\n")
    with pytest.raises(ValueError, match="in data.pool;"):
        load_groups({"X": [tmp_path / "mv" / "r1", tmp_path / "mv" / "r2"]})


def test_partly_failed_run_is_reported_whole(built, tmp_path):
    """A run killed mid-write (half a metrics line), an evaluation during training that failed and one
    whose summary held no student row, and an eval folder the evaluation never finished: every
    figure and table that can be drawn is, and each thing left out is named with its file:line."""
    run = make_run(tmp_path / "k0", built["pool"], seed=0, steps=12, offset=0.5, evals="both")
    with RunDir(run).metrics.open("a") as f:
        f.write('{"step": 13, "sft_loss/llama": 0.')  # the kill
    with RunDir(run).eval_log.open("a") as f:
        f.write(json.dumps({"step": 10, "returncode": 0, "accuracy": {}}) + "\n")
    unfinished = tmp_path / "eval_unfinished"
    unfinished.mkdir()
    (unfinished / "predictions.jsonl").write_text("")
    build_report(tmp_path / "out", {"K": run}, [built["eval"], unfinished])
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {"loss", "eval_curve", "router_training", "routing_style_k", "style_loss_k"} <= set(data["figures"])
    for name in data["figures"].values():
        assert (tmp_path / "out" / name).stat().st_size > 1000
    skipped = data["skipped"]
    metrics = RunDir(run).metrics
    assert any(f"{metrics}:13: not valid JSON" in s and "quarantine" in s for s in skipped), skipped
    assert (metrics.parent / "metrics.jsonl.quarantine.jsonl").is_file()
    assert any("K at step 6: no accuracy" in s for s in skipped) and any("K at step 10: no accuracy" in s for s in skipped)
    assert any(f"eval folder {unfinished}: FileNotFoundError" in s for s in skipped)
    md = (tmp_path / "out" / "report.md").read_text()
    assert all(s in md for s in skipped) and "## Throughput" in md


def test_a_fixed_assignment_has_no_router_to_score_and_is_not_reported_missing(built, tmp_path):
    """An oracle arm (router.fixed) saves no router.pt: the report leaves its routing out without
    calling its checkpoint incomplete; a learned run without router.pt still gets that error."""
    from qr_ds.report.runs import final_routing

    fixed = make_run(tmp_path / "oracle", built["pool"], seed=0, steps=12, offset=0.5,
                     router={"hidden": 8, "fixed": {"llama": ["cot"]}})
    RunDir(fixed).require_latest().component("router").unlink()
    assert final_routing(fixed) is None
    build_report(tmp_path / "out", {"A": built["runs"]["a0"], "O": fixed})
    assert not any("routing of O" in s for s in json.loads((tmp_path / "out" / "report.json").read_text())["skipped"])
    learned = make_run(tmp_path / "learned", built["pool"], seed=0, steps=12, offset=0.5)
    RunDir(learned).require_latest().component("router").unlink()
    with pytest.raises(FileNotFoundError, match="router.enabled"):
        final_routing(learned)
