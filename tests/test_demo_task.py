"""The demo task's premises, on the data itself (the SFT probes that check what students learn from it
are benchmarks/probe_demo_task.py): one consistent wrong rule, false intermediate values that only a
step-checking judge catches, long styles that a short context cuts before their answer, and every
output of the scripted stand-ins saying what made it."""
import re
from pathlib import Path

import pytest

from qr_ds.config import from_dict
from qr_ds.data.format import encode_sft, render_prompt
from qr_ds.data.pool import load_pool
from qr_ds.data.styles import STYLES
from qr_ds.demo import VARIANTS
from qr_ds.experiments.probes import Knobs, doubles
from qr_ds.filter.config import FilterConfig
from qr_ds.filter.run import STAND_IN, report_paths, run_filter
from qr_ds.tasks import generate_synthetic, get_task, write_synthetic
from qr_ds.teacher.config import GenerateConfig
from qr_ds.teacher.generate import generate, plan
from qr_ds.teacher.scripted import (LONG_STYLES, MODEL_NAME, OPENERS, QUICK_STYLES, ScriptedTeacher, false_step,
                                    misreads_doubling, steps_of)
from qr_ds.tiny import train_tokenizer

TASK = get_task("synthetic")
SHORT, LONG = "llama-bpe", "qwen-bpe"  # the demo's short- and long-context students


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """The demo's training questions through the scripted teacher and judge; each path with its plan."""
    d = tmp_path_factory.mktemp("demo_task")
    write_synthetic(d / "train.jsonl", 150, seed=0)
    cfg = from_dict(GenerateConfig, {"task": "synthetic", "data": str(d / "train.jsonl"), "out": str(d / "pool.jsonl"),
                                     "teacher": {"backend": "scripted", "sampling": {"seed": 0}}})
    generate(cfg, progress=False)
    run_filter(from_dict(FilterConfig, {"pool": str(cfg.out), "out": str(d / "kept.jsonl"),
                                        "judge": {"backend": "scripted"}}), progress=False)
    teacher = ScriptedTeacher(cfg.teacher)
    requests, _ = plan(cfg, MODEL_NAME, TASK.load(str(d / "train.jsonl")))
    plans = {r.key: teacher.plan(r) for r in requests}
    pool = load_pool(cfg.out).records
    kept = {r.id for r in load_pool(d / "kept.jsonl").records}
    return pool, plans, kept, d


def test_about_half_the_questions_double():
    share = sum(map(doubles, generate_synthetic(300, seed=5))) / 300
    assert 0.4 < share < 0.6


def test_every_wrong_path_applies_the_one_wrong_rule(demo_data):
    pool, plans, kept, _ = demo_data
    questions = {e.id: e for e in generate_synthetic(150, 0)}
    wrong = [r for r in pool if TASK.extract(r.response, None) != r.gold]
    assert len(wrong) > 100
    for r in pool:
        ex = questions[r.question_id]
        assert (r in wrong) == misreads_doubling(r.response) == plans[r.id].misread, r.id
        if r in wrong:  # doubling read as adding two, in every doubling step, and nothing else off
            assert TASK.extract(r.response, None) == str(steps_of(ex, misread=True)[-1].result)
            assert not re.search(r"\d \* 2", r.response) and r.id not in kept
    # the quick styles misread far more often than the long ones
    rate = {s: sum(r.style == s for r in wrong) / sum(r.style == s for r in pool) for s in QUICK_STYLES + LONG_STYLES}
    assert min(rate[s] for s in QUICK_STYLES) > 3 * max(rate[s] for s in LONG_STYLES)


def test_false_intermediate_paths_teach_wrong_arithmetic_and_only_the_judge_catches_them(demo_data):
    pool, plans, kept, _ = demo_data
    slipped = [r for r in pool if plans[r.id].slip]
    assert len(slipped) > 50
    for r in slipped:
        assert TASK.extract(r.response, None) == r.gold and not misreads_doubling(r.response)  # passes step 1
        line, _ = false_step(r.response)
        bad = r.response.splitlines()[line - 1]
        a, op, b, c = re.search(r"(\d+) ([-+*]) (\d+)(?: = |\s+#[^:]*: )(\d+)", bad).groups()
        assert eval(f"{a} {op} {b}") != int(c)
        following = re.search(r"(\d+) [-+*] \d+", "\n".join(r.response.splitlines()[line:])).group(1)
        assert following == c, f"{r.id}: the next step does not use the false value {c}"
        assert r.id not in kept  # the scripted judge found it
    clean = [r for r in pool if not (plans[r.id].misread or plans[r.id].slip or plans[r.id].unused)]
    assert {r.id for r in clean} == kept  # and it flagged no clean path
    assert all(false_step(r.response) is None for r in clean)


def _tokens_before(tok, rec, where: int) -> tuple[int, int]:
    """(tokens of prompt + whole path, tokens before character ``where`` of the path)."""
    prompt = render_prompt(tok, rec.question, TASK.instruction)
    enc = encode_sft(tok, prompt, rec.response)
    return len(enc.input_ids), sum(1 for a, b in enc.offsets if 0 < b <= len(prompt) + where)


def test_a_short_context_cuts_the_long_styles_before_their_arithmetic(demo_data):
    pool, _, kept, _ = demo_data
    clean = [r for r in pool if r.id in kept]
    corpus = [t for r in clean for t in (r.question, r.response)] + [TASK.instruction]  # as the demo's students
    knobs = Knobs()
    short, long_ = train_tokenizer(SHORT, corpus, 600), train_tokenizer(LONG, corpus, 600)
    for r in pool:
        first_equation = re.search(r"\d+ [-+*/] \d+", r.response).start()
        total, before = _tokens_before(short, r, first_equation)
        if r.style in QUICK_STYLES:
            assert total <= knobs.max_len[SHORT], r.id
        else:  # the short student sees neither the arithmetic nor the answer line
            assert r.style in LONG_STYLES and before > knobs.max_len[SHORT], r.id
        total, prompt = _tokens_before(long_, r, 0)
        assert total <= knobs.max_len[LONG] and total - prompt <= knobs.max_new_tokens, r.id


def test_scripted_outputs_say_they_come_from_a_stand_in(demo_data):
    pool, _, _, d = demo_data
    assert {r.teacher for r in pool} == {MODEL_NAME} and "stand-in" in MODEL_NAME
    md, _ = report_paths(d / "kept.jsonl")
    assert f"judged by: {STAND_IN}" in md.read_text()


@pytest.mark.parametrize("variant", ["harm", "harm_long"])
def test_harm_variant_paths_teach_the_short_student_the_wrong_rule_and_pass_every_filter(tmp_path, variant):
    """The routing study's harm variants (qr_ds/demo.py VARIANTS): a harm-style path of a doubling
    question misreads doubling inside the short student's context and corrects it only after it; its
    final answer is right and a step-checking judge finds nothing false, so the filter keeps it."""
    harm_styles = VARIANTS[variant]["harm_styles"]
    write_synthetic(tmp_path / "train.jsonl", 60, seed=0)
    cfg = from_dict(GenerateConfig, {"task": "synthetic", "data": str(tmp_path / "train.jsonl"),
                                     "out": str(tmp_path / "pool.jsonl"), "styles": [*harm_styles, "cot"],
                                     "teacher": {"backend": "scripted", "sampling": {"seed": 0},
                                                 "scripted": {"harm_styles": harm_styles}}})
    generate(cfg, progress=False)
    run_filter(from_dict(FilterConfig, {"pool": str(cfg.out), "out": str(tmp_path / "kept.jsonl"),
                                        "judge": {"backend": "scripted"}}), progress=False)
    pool = load_pool(cfg.out).records
    kept = {r.id: r for r in load_pool(tmp_path / "kept.jsonl").records}
    corpus = [t for r in pool for t in (r.question, r.response)] + [TASK.instruction]
    short = train_tokenizer(SHORT, corpus, 600)
    harmful = [r for r in pool if r.style in harm_styles and "Corrected pass" in r.response]
    for style in harm_styles:  # every harm style carries about one path per doubling question
        assert len([r for r in harmful if r.style == style]) >= 15, style
    assert not any("Corrected pass" in r.response for r in pool if r.style == "cot")
    for r in harmful:
        correction = r.response.index("is wrong:")
        first_misread = re.search(r"doubles them: -?\d+ \+ 2 = ", r.response).start()
        _, seen_misread = _tokens_before(short, r, first_misread + 20)
        _, seen_correction = _tokens_before(short, r, correction)
        assert seen_misread <= Knobs().max_len[SHORT] < seen_correction, r.id
        # inside the short context it reads as a vanilla path that states the misread answer
        head = r.response[:correction]
        assert head.startswith(OPENERS["vanilla"]) and not r.response.startswith(OPENERS[r.style]), r.id
        stated = re.search(r"The answer is (-?\d+)\.", head)
        _, seen_answer = _tokens_before(short, r, stated.end())
        assert int(stated.group(1)) != int(r.gold) and seen_answer <= Knobs().max_len[SHORT], r.id
        assert TASK.extract(r.response, None) == r.gold, r.id  # the last stated answer is the right one
    # right final answer and no false step: kept by both filter steps (but those the teacher also gave
    # a planted false intermediate value, which the judge rightly drops)
    assert len([r for r in harmful if r.id in kept]) >= 0.8 * len(harmful)
    assert all(kept[r.id].correct for r in harmful if r.id in kept)
    assert all(r.id in kept for r in harmful if false_step(r.response) is None)


def test_the_oracle_arms_keep_each_variants_own_harm_from_the_short_student_only(tmp_path):
    from qr_ds.demo import overrides, run_demo, write_oracle_withhold

    # a harm variant keeps its harmful paths in the data (data.drop_cut_wrong would drop them in every arm)
    kept = {"data": {"drop_cut_wrong": False}}
    assert overrides("oracle_style", "harm") == {
        **kept, "router": {"fixed": {"llama": [s for s in STYLES if s != "backward"]}}}
    assert overrides("oracle_style", "harm_long") == {**kept, "router": {"fixed": {"llama": list(QUICK_STYLES)}}}
    assert overrides("oracle", "harm_long", tmp_path) == {
        **kept, "router": {"withhold": {"llama": str(tmp_path / "oracle_withhold_llama.txt")}}}
    # the checked arms switch the filter back on; the original task takes the defaults
    assert overrides("no_route_checked", "harm_long") == {"data": {"drop_cut_wrong": True},
                                                          "router": {"enabled": False}}
    assert overrides("no_filter", "harm") == {"data": {"drop_cut_wrong": False, "quality_filter": False}}
    assert overrides("qr_distill", "original") == {}
    # the path oracle's file lists exactly the corrected-late paths of the variant's pool
    pool = tmp_path / "pool.jsonl"
    write_synthetic(tmp_path / "train.jsonl", 40, seed=0)
    generate(from_dict(GenerateConfig, {"task": "synthetic", "data": str(tmp_path / "train.jsonl"),
                                        "out": str(pool), "styles": ["cot", "backward"],
                                        "teacher": {"backend": "scripted", "sampling": {"seed": 0},
                                                    "scripted": {"harm_styles": ["backward"]}}}), progress=False)
    records = load_pool(pool).records
    listed = write_oracle_withhold(pool).read_text().split()
    assert listed and listed == [r.id for r in records if "Corrected pass" in r.response]
    assert {r.style for r in records if r.id in listed} == {"backward"}
    assert overrides("no_route", "harm_long") == {**kept, "router": {"enabled": False}}
    # the original task has nothing to keep away: refused before any stage writes a file
    with pytest.raises(SystemExit, match="--variant original has none"):
        run_demo(Path("/nonexistent/demo-out"), "small", methods=("no_route", "oracle"))


def test_methods_that_train_identically_on_a_variant_are_refused_before_any_stage():
    """On the original task `checked` sets only what is already the default: the report would show one
    config twice under two names. On a harm variant the two differ (it switches the check off there)."""
    from qr_ds.demo import refuse_same_training, run_demo

    with pytest.raises(SystemExit, match="qr_distill and checked train identically on --variant original"):
        run_demo(Path("/nonexistent/demo-out"), "small", methods=("qr_distill", "no_route", "checked"))
    with pytest.raises(SystemExit, match="no_route and no_route_checked"):
        run_demo(Path("/nonexistent/demo-out"), "small", methods=("no_route", "no_route_checked"))
    assert not Path("/nonexistent/demo-out").exists()
    refuse_same_training(("qr_distill", "checked", "no_route", "no_route_checked"), "harm_long")  # no error
