"""qr-ds filter on a pool from the scripted stand-in teacher, judged by its scripted judge (named in each config)."""
import json
from collections import Counter

import pytest
import yaml

from qr_ds.cli import main
from qr_ds.config import from_dict
from qr_ds.data.pool import load_pool
from qr_ds.filter.config import FilterConfig
from qr_ds.filter.run import STAND_IN, FilterFailed, judge_log_path, report_paths, run_filter
from qr_ds.tasks import generate_synthetic, get_task, write_synthetic
from qr_ds.teacher.base import Request
from qr_ds.teacher.config import GenerateConfig
from qr_ds.teacher.generate import generate
from qr_ds.teacher.scripted import ScriptedTeacher, spurious_step


@pytest.fixture(scope="module")
def scripted_pool(tmp_path_factory):
    d = tmp_path_factory.mktemp("pool")
    write_synthetic(d / "syn.jsonl", 12, seed=3)
    cfg = from_dict(GenerateConfig, {"task": "synthetic", "data": str(d / "syn.jsonl"), "out": str(d / "pool.jsonl"),
                                     "samples_per_style": 2, "teacher": {"backend": "scripted"}})
    generate(cfg, progress=False)
    return cfg


def filter_cfg(pool, out, **kw):
    return from_dict(FilterConfig, {"pool": str(pool), "out": str(out), "judge": {"backend": "scripted"}, **kw})


def planted_faults(gen: GenerateConfig, records) -> list:
    """The right-answer paths the scripted teacher planted a false step in, by its own plan: what it
    wrote, not what its judge finds, so the judge is checked against the truth."""
    teacher, task = ScriptedTeacher(gen.teacher), get_task("synthetic")
    examples = {ex.id: ex for ex in generate_synthetic(12, 3)}  # the fixture's data file
    plans = {r.id: teacher.plan(Request(r.id, "", 0, {"example": examples[r.question_id], "style": r.style,
                                                      "task": task})) for r in records}
    assert any(p.slip for p in plans.values()) and any(p.unused for p in plans.values())  # both kinds planted
    return [r for r in records if plans[r.id].slip or plans[r.id].unused]


def test_two_steps_and_retention_table(scripted_pool, tmp_path):
    cfg = filter_cfg(scripted_pool.out, tmp_path / "kept.jsonl")
    res = run_filter(cfg, progress=False)
    pool = load_pool(scripted_pool.out).records
    kept = load_pool(cfg.out).records
    assert len(pool) == 144

    wrong = [r for r in pool if not r.response.rstrip(".").endswith(r.gold)]
    planted = planted_faults(scripted_pool, pool)
    assert wrong and planted  # the scripted teacher gave both steps work
    kept_ids = {r.id for r in kept}
    assert not kept_ids & {r.id for r in wrong + planted}
    assert len(kept) == len(pool) - len(wrong) - len(planted)
    for r in kept:
        assert r.correct is True and r.answer == r.gold and r.judge.verdict == "VALID"
        assert r.judge.model == STAND_IN  # every output made with the stand-in says so

    invalid = [json.loads(line) for line in open(judge_log_path(cfg.out))]
    assert sorted(j["id"] for j in invalid if j["verdict"] == "INVALID") == sorted(r.id for r in planted)
    step_of = {r.id: spurious_step(r.response) for r in planted}
    assert all(f"step {step_of[j['id']]} " in j["reason"].lower() for j in invalid if j["verdict"] == "INVALID")

    total = res.rows[-1]
    assert (total["task"], total["paths"], total["correct"], total["invalid"], total["kept"]) == (
        "all", 144, 144 - len(wrong), len(planted), len(kept))
    per_style = Counter(r.style for r in kept)
    assert {r["style"]: r["kept"] for r in res.rows[:-1]} == dict(per_style)
    assert total["step1_rate"] == round((144 - len(wrong)) / 144, 4)
    md, js = report_paths(cfg.out)
    assert json.loads(js.read_text())["rows"] == res.rows and "| synthetic | program |" in md.read_text()
    assert json.loads(js.read_text())["judged_by"] == STAND_IN and f"judged by: {STAND_IN}" in md.read_text()

    again = run_filter(cfg, progress=False)  # every verdict comes from the cache
    assert again.judge.asked == 0 and again.judge.cached == 144 - len(wrong)
    assert [r.id for r in load_pool(cfg.out).records] == [r.id for r in kept]


def test_unparseable_retries_and_keep_switch(scripted_pool, tmp_path):
    judge = {"backend": "scripted", "scripted": {"unparseable_rate": 1.0}}
    with pytest.raises(FilterFailed, match="no path was kept") as failed:
        run_filter(filter_cfg(scripted_pool.out, tmp_path / "a.jsonl", judge=judge, judge_retries=2), progress=False)
    res = failed.value.result
    n_correct = res.rows[-1]["correct"]
    assert res.judge.tries == 3 * n_correct and res.rows[-1]["unparseable"] == n_correct and res.kept == 0
    assert load_pool(tmp_path / "a.jsonl").records == []
    rows = [json.loads(line) for line in open(judge_log_path(tmp_path / "a.jsonl"))]
    assert all(r["verdict"] == "UNPARSEABLE" and r["tries"] == 3 and "no verdict in 3 replies" in r["reason"] for r in rows)

    res = run_filter(filter_cfg(scripted_pool.out, tmp_path / "b.jsonl", judge=judge, judge_retries=0,
                                keep_unparseable=True), progress=False)
    assert res.judge.tries == n_correct and res.kept == n_correct
    assert {r.judge.verdict for r in load_pool(tmp_path / "b.jsonl").records} == {"UNPARSEABLE"}

    # a judge that is unparseable only sometimes: retries recover most verdicts; without
    # keep_unparseable the rest stay out of the output, which is what the trainer reads
    res = run_filter(filter_cfg(scripted_pool.out, tmp_path / "c.jsonl", judge_retries=1,
                                judge={"backend": "scripted", "scripted": {"unparseable_rate": 0.5}}), progress=False)
    assert res.judge.tries > n_correct and 0 < res.rows[-1]["unparseable"] < n_correct // 3
    assert {r.judge.verdict for r in load_pool(tmp_path / "c.jsonl").records} == {"VALID"}


def test_cli_no_judge_keeps_every_correct_path(scripted_pool, tmp_path):
    cfg_file = tmp_path / "pipe.yaml"
    cfg_file.write_text(yaml.safe_dump({"filter": {"pool": str(scripted_pool.out), "out": str(tmp_path / "k.jsonl")}}))
    assert main(["filter", str(cfg_file), "--no-judge", "--no-progress"]) == 0
    kept = load_pool(tmp_path / "k.jsonl").records
    table = json.loads(report_paths(tmp_path / "k.jsonl")[1].read_text())
    assert table["judged_by"] == "none: step 2 skipped" and len(kept) == table["rows"][-1]["correct"] > 0
    assert "judged by: none: step 2 skipped" in report_paths(tmp_path / "k.jsonl")[0].read_text()
    assert all(r.correct and r.judge is None for r in kept)
    assert not judge_log_path(tmp_path / "k.jsonl").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"pool": "x", "out": "y", "judge_retries": -1}))
    assert main(["filter", str(bad)]) == 2
