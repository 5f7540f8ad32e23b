"""The paper's Table 1 baselines (qr_ds/data/baselines.py) and Figure 6's question_fraction: what each
baseline's teacher is asked, the data it trains on and its objective, checked against answers known
from the synthetic task; then every baseline end to end with the scripted stand-in teacher."""
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch

from qr_ds.config import ConfigError, from_dict, load_config
from qr_ds.data.baselines import BASELINES, WRITERS, teacher_calls
from qr_ds.data.pool import PathRecord, PoolStream, iter_pool, write_pool
from qr_ds.filter.config import FilterConfig
from qr_ds.filter.run import run_filter
from qr_ds.stages import load_stage_config
from qr_ds.tasks import get_task, solve_steps, write_synthetic
from qr_ds.tasks.base import Example
from qr_ds.teacher.config import GenerateConfig
from qr_ds.teacher.derive import baseline_pool, derive, solved_path
from qr_ds.teacher.generate import generate
from qr_ds.testing import builders
from qr_ds.train.config import TrainConfig
from qr_ds.train.encoding import selected, source_question

CONFIGS = builders.ROOT / "configs"
N_QUESTIONS = 12
K_ANSWER_AUG = 4  # configs/baseline-answer_aug.yaml


def run_pipeline(name: str, root: Path, data: Path, wrong_rate: float = 0.25) -> dict[str, Path]:
    """generate (+ derive) + filter of configs/baseline-<name>.yaml, into ``root``."""
    cfg_file = CONFIGS / f"baseline-{name}.yaml"
    out = root / name / "pool.jsonl"
    gen = load_stage_config(GenerateConfig, cfg_file, "generate",
                            [("data", str(data)), ("out", str(out)), ("teacher.scripted.wrong_rate", wrong_rate)])
    generate(gen, progress=False)
    if any(s in WRITERS for s in gen.style_templates()):
        derive(gen, progress=False)
    filtered = root / name / "filtered.jsonl"
    filt = load_stage_config(FilterConfig, cfg_file, "filter", [
        ("pool", str(baseline_pool(gen) if gen.baseline in ("rephrase", "question_aug", "revthink") else out)),
        ("out", str(filtered))])
    run_filter(filt, progress=False)
    return {"generate": gen, "pool": out, "filtered": filtered}


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    write_synthetic(root / "data.jsonl", N_QUESTIONS, 0)
    # wrong_rate 0.5: enough wrong stated answers among 12 written questions for the checks to have work
    return {name: run_pipeline(name, root, root / "data.jsonl", wrong_rate=0.5) for name in BASELINES}


def train_cfg(pool: Path, **data) -> TrainConfig:
    return from_dict(TrainConfig, {"students": [{"name": "a", "model": "unused"}], "data": {"pool": str(pool), **data},
                                   "router": {"enabled": False}, "mutual": {"enabled": False}})


def trained_on(pool: Path, **data) -> list[PathRecord]:
    cfg = train_cfg(pool, **data)
    return [r for _, r in selected(cfg, PoolStream(pool, log=lambda m: None))]


# -- what the teacher is asked ------------------------------------------------------------------

def test_generate_config_asks_for_the_baseline_styles_and_names_bad_keys(tmp_path):
    base = {"task": "synthetic", "data": "d.jsonl", "out": str(tmp_path / "p.jsonl"), "teacher": {"backend": "scripted"}}
    assert list(from_dict(GenerateConfig, {**base, "baseline": "revthink"}).style_templates()) == ["cot", "backward_question"]
    plain = from_dict(GenerateConfig, base).style_templates()
    assert not set(plain) & set(WRITERS), "a config without a baseline never asks the writers"
    for over, key in [({"baseline": "answer_aug"}, "samples_per_style"), ({"baseline": "revthnk"}, "baseline"),
                      ({"baseline": "skd", "styles": ["cot"]}, "styles")]:
        with pytest.raises(ConfigError, match=f"'{key}'"):
            from_dict(GenerateConfig, {**base, **over})


def test_teacher_calls_per_question_are_what_a_run_asks(pipelines):
    """The cost the docs state (teacher_calls) against the requests a run made, per question."""
    expected = {"skd": 1, "step_by_step": 1, "answer_aug": K_ANSWER_AUG, "rephrase": 3, "question_aug": 3, "revthink": 3}
    for name, p in pipelines.items():
        gen = p["generate"]
        made = len(list(iter_pool(p["pool"], log=lambda m: None)))
        made += sum(len(list(iter_pool(solved_path(gen, w), log=lambda m: None)))
                    for w in WRITERS if solved_path(gen, w).is_file())
        assert made == expected[name] * N_QUESTIONS == teacher_calls(name, gen.samples_per_style) * N_QUESTIONS, name


# -- the data each baseline trains on ----------------------------------------------------------

def test_rephrased_questions_keep_their_answer_and_the_originals_stay(pipelines):
    recs = trained_on(pipelines["rephrase"]["filtered"])
    rephrased = [r for r in recs if r.meta["example_meta"].get("writer") == "rephrase"]
    assert rephrased and len(rephrased) < len(recs), "the student trains on originals and rephrased questions"
    for r in rephrased:
        assert r.question != r.meta["example_meta"]["source_question"]
        truth = solve_steps(Example("x", "synthetic", r.question, r.gold))[-1][1]
        assert str(truth) == r.gold == r.answer  # the rephrase kept the answer, and the path found it


@pytest.mark.parametrize("name", ["question_aug", "revthink"])
def test_a_written_question_is_trained_on_only_when_its_answer_checks(pipelines, name):
    """The writer states a wrong answer in about half its replies (wrong_rate 0.5): where the solving
    call finds the true answer, the two disagree and the filter drops the question; every kept one has
    a solution whose answer is its gold. (A wrong solution that agrees with a wrong statement passes:
    two teacher calls agreeing is the check, as in the methods' papers.)"""
    gen = pipelines[name]["generate"]
    writer = next(s for s in gen.style_templates() if s in WRITERS)
    solved = list(iter_pool(solved_path(gen, writer), log=lambda m: None))
    kept = {r.id for r in iter_pool(pipelines[name]["filtered"], log=lambda m: None)}
    extract = get_task("synthetic").extract

    def truth(r: PathRecord) -> str:
        if name == "question_aug":
            return str(solve_steps(Example("x", "synthetic", r.question, "0"))[-1][1])
        return re.match(r"\w+ has (\d+) ", r.meta["example_meta"]["source_question"]).group(1)  # the start

    caught = [r for r in solved if r.gold != truth(r) and extract(r.response) == truth(r)]
    assert caught and not {r.id for r in caught} & kept
    assert all(extract(r.response) == r.gold for r in solved if r.id in kept)
    assert any(r.id in kept and r.gold == truth(r) for r in solved)


def test_step_by_step_trains_every_path_as_a_label_and_a_rationale(pipelines):
    pool = pipelines["step_by_step"]["filtered"]
    paths = [r for r in iter_pool(pool, log=lambda m: None)]
    recs = trained_on(pool, objective="step_by_step")
    assert Counter(r.train_task for r in recs) == {"label": len(paths), "rationale": len(paths)}
    for p in paths:
        label, rationale = (r for r in recs if r.id.startswith(p.id + "#"))
        assert (label.question, label.response) == (p.question, f"The answer is {p.gold}.")
        assert (rationale.question, rationale.response) == (p.question, p.response)


def test_revthink_trains_forward_backward_question_and_backward_reasoning(pipelines):
    pool = pipelines["revthink"]["filtered"]
    recs = trained_on(pool, objective="revthink")
    tasks = Counter(r.train_task for r in recs)
    assert tasks[None] and tasks["backward_question"] == tasks["backward_reasoning"] > 0
    for r in recs:
        if r.train_task == "backward_question":  # original question -> the backward question
            assert r.question == r.meta["example_meta"]["source_question"] and r.response.startswith(
                r.meta["example_meta"]["source_question"].split(".")[0].split(" has ")[0] + " has some ")
        if r.train_task == "backward_reasoning":  # backward question -> its reasoning
            assert "ends with" in r.question and r.response.endswith(f"The answer is {r.gold}.")
    # sft trains each record as its own task: no backward question asked for
    assert Counter(r.train_task for r in trained_on(pool)) == {None: tasks[None], "backward_reasoning": tasks["backward_reasoning"]}


def test_unknown_train_task_is_refused_naming_the_line(tmp_path, pipelines):
    recs = list(iter_pool(pipelines["skd"]["filtered"], log=lambda m: None))
    recs[1].train_task = "sideways"
    write_pool(tmp_path / "p.jsonl", recs)
    with pytest.raises(ValueError, match=r"p\.jsonl:2: path .* train_task 'sideways'"):
        trained_on(tmp_path / "p.jsonl")


# -- Figure 6: a fraction of the questions --------------------------------------------------------

def test_question_fraction_picks_the_same_questions_for_every_method_with_all_their_paths(pipelines):
    methods = {name: pipelines[name]["filtered"] for name in ("answer_aug", "rephrase", "revthink")}
    picked, full = {}, {}
    for name, pool in methods.items():
        everything = trained_on(pool)
        assert trained_on(pool, question_fraction=1.0) == everything
        half = trained_on(pool, question_fraction=0.5, question_seed=3)
        per_q = defaultdict(list)
        for r in everything:
            per_q[source_question(r)].append(r.id)
        mine = defaultdict(list)
        for r in half:
            mine[source_question(r)].append(r.id)
        assert all(mine[q] == per_q[q] for q in mine), "a chosen question keeps every one of its paths"
        assert 0 < len(mine) < len(per_q)
        picked[name], full[name] = set(mine), set(per_q)
    common = set.intersection(*full.values())
    assert len({frozenset(p & common) for p in picked.values()}) == 1, "the same questions for every method"
    other_seed = {source_question(r) for r in trained_on(methods["answer_aug"], question_fraction=0.5, question_seed=4)}
    assert other_seed != picked["answer_aug"]


# -- the objective reaches the loss, and every baseline trains ----------------------------------

@pytest.fixture(scope="module")
def strategy():
    from qr_ds.testing.in_process import one_process_strategy

    with one_process_strategy(1) as strat:
        yield strat


@pytest.fixture(scope="module")
def student(tmp_path_factory, pipelines):
    from qr_ds.data.baselines import TRAIN_TASKS
    from qr_ds.tiny import build_tiny_student

    text = [t for p in pipelines.values() for r in iter_pool(p["filtered"], log=lambda m: None)
            for t in (r.question, r.response)] + [t.prefix for t in TRAIN_TASKS.values()]
    return build_tiny_student("llama-bpe", tmp_path_factory.mktemp("student") / "llama", text, vocab_size=600)


def trainer(strategy, student, pool: Path, out: Path, **data):
    import yaml

    from qr_ds.train.trainer import Trainer

    path = builders.write_config(out.with_suffix(".yaml"), [student], pool, out, placement="colocated",
                                 max_steps=2, router={"enabled": False}, mutual={"enabled": False},
                                 data={"pool": str(pool), "max_len": 256, **data})
    cfg = yaml.safe_load(path.read_text())
    cfg["students"][0]["finetune"] = "full"
    path.write_text(yaml.safe_dump(cfg))
    return Trainer(load_config(TrainConfig, path), strategy, log=lambda *_: None)


def test_both_step_by_step_tasks_reach_the_loss_with_their_weights(strategy, student, pipelines, tmp_path):
    """Known answer: the SFT loss is linear in the task weights, L(2, 3) = 2 L(1, 0) + 3 L(0, 1), and
    each task alone gives a loss > 0; the rationale paths' prompts carry the task's prefix."""
    from qr_ds.train.data import path_weights

    tr = trainer(strategy, student, pipelines["step_by_step"]["filtered"], tmp_path / "sbs", objective="step_by_step",
                 task_weights={"label": 2.0, "rationale": 3.0})
    tasks = tr.data.prepared.meta["train_tasks"]
    task_index = tr.data.prepared.train_task
    assert sorted(tasks) == ["label", "rationale"]
    assert tr.data.path_weight.tolist() == [{"label": 2.0, "rationale": 3.0}[tasks[i]] for i in task_index]
    st = tr.students[0]
    idx = torch.arange(len(tr.data))
    hard = torch.ones(len(idx), 1)

    def loss(weights: dict) -> float:
        tr.data.path_weight = path_weights(tasks, task_index, weights)
        with torch.no_grad():
            return float(tr.forward_student(st, idx, list(range(len(idx))), hard, states=False)[0])

    label, rationale = loss({"label": 1.0, "rationale": 0.0}), loss({"label": 0.0, "rationale": 1.0})
    assert label > 0 and rationale > 0
    assert loss({"label": 2.0, "rationale": 3.0}) == pytest.approx(2 * label + 3 * rationale, rel=1e-5)
    tok = tr.tokenizers[0]
    prompts = {tasks[t]: tok.decode(tr.data.encoded[0][i].input_ids) for i, t in enumerate(task_index)}
    assert "[rationale]" in prompts["rationale"] and "[rationale]" not in prompts["label"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BASELINES))
def test_each_baseline_trains_end_to_end(strategy, student, pipelines, tmp_path, name):
    """generate (+ derive) + filter above, then two optimizer steps of the baseline's training."""
    objective = BASELINES[name].objective
    tr = trainer(strategy, student, pipelines[name]["filtered"], tmp_path / name, objective=objective)
    before = {n: p.detach().clone() for n, p in tr.students[0].engine.module.named_parameters()}
    last = tr.fit()
    assert last["step"] == 2 and torch.isfinite(torch.tensor(last["loss"]))
    after = dict(tr.students[0].engine.module.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)
    want = {"sft": {"main"}, "step_by_step": {"label", "rationale"},
            "revthink": {"main", "backward_question", "backward_reasoning"}}[objective]
    assert set(tr.data.prepared.meta["train_tasks"]) == want


@pytest.mark.slow
def test_a_multi_task_baseline_trains_through_the_deepspeed_launcher(student, pipelines, tmp_path):
    """RevThink (three tasks, written questions) through the real launcher, as `qr-ds train` runs it."""
    import json

    run = tmp_path / "revthink"
    cfg = builders.write_config(tmp_path / "revthink.yaml", [student], pipelines["revthink"]["filtered"], run,
                                max_steps=2, router={"enabled": False}, mutual={"enabled": False},
                                data={"pool": str(pipelines["revthink"]["filtered"]), "max_len": 256,
                                      "objective": "revthink", "task_weights": {"backward_question": 0.5}})
    res = builders.launch(cfg, 1)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["loss"] > 0 for r in rows)


def test_the_reports_slim_records_pick_the_same_questions(pipelines):
    """qr-ds report reruns the selection over slim records (report/runs.py): a fraction of the
    questions must pick the same paths there, written questions included."""
    from qr_ds.report.runs import _Routed
    from qr_ds.train.encoding import select_paths

    pool = pipelines["rephrase"]["filtered"]
    recs = list(iter_pool(pool, log=lambda m: None))
    slim = [_Routed(r, None, None) for r in recs]
    cfg = train_cfg(pool, question_fraction=0.5, question_seed=3)
    full = [recs.index(r) for r in select_paths(cfg, recs)]
    assert [slim.index(r) for r in select_paths(cfg, slim)] == full and 0 < len(full) < len(recs)


@pytest.mark.slow
def test_step_by_step_on_the_real_packaged_student(strategy, tmp_path):
    """A baseline's objective on a real model: SmolLM2-135M-Instruct (its PyPI GGUF package) trains two
    LoRA steps of Step-by-Step on the real teacher's ARC paths; both tasks are in its data."""
    from qr_ds.testing import real_students as real
    from qr_ds.train.trainer import Trainer

    if real.missing_packages():
        pytest.skip(real.missing_packages())
    pool = real.teacher_pool(tmp_path / "pool", "arc", limit=4)
    cfg = real.write_pair_config(tmp_path / "sbs.yaml", pool, tmp_path / "run", router={"enabled": False},
                                 mutual={"enabled": False}, placement="colocated",
                                 data={"pool": str(pool), "max_len": 256, "objective": "step_by_step"})
    import yaml

    c = yaml.safe_load(cfg.read_text())
    c["students"] = c["students"][:1]  # smollm2
    cfg.write_text(yaml.safe_dump(c))
    tr = Trainer(load_config(TrainConfig, cfg), strategy, log=lambda *_: None)
    assert sorted(tr.data.prepared.meta["train_tasks"]) == ["label", "rationale"] and len(tr.data) == 8
    last = tr.fit()
    assert last["step"] == 2 and torch.isfinite(torch.tensor(last["loss"]))
