"""Loading the shipped samples and hub-format records, the registry, the synthetic task, and
the teacher-style endings rendered for every sample example."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qr_ds.data.styles import STYLES
from qr_ds.tasks import generate_synthetic, get_task, list_tasks, solve_steps, write_synthetic

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
FILES = {"anli": "anli_r3", "arc_challenge": "arc_challenge", "date_understanding": "date_understanding",
         "gsm8k": "gsm8k", "math": "math", "strategyqa": "strategyqa"}
GOLDS = {"anli": {"entailment", "neutral", "contradiction"}, "strategyqa": {"yes", "no"}}


@pytest.mark.parametrize("name", FILES)
def test_samples_load(name: str) -> None:
    task = get_task(name)
    examples = task.load(str(SAMPLES / f"{FILES[name]}.jsonl"))
    assert len(examples) == 50 and len({e.id for e in examples}) == 50
    for e in examples:
        assert e.task == name and e.question and e.gold
        if name in GOLDS:
            assert e.gold in GOLDS[name]
        if e.choices:
            assert e.gold in dict(e.choices) and "Answer Choices: (" in e.question
    assert task.load(str(SAMPLES / f"{FILES[name]}.jsonl"), limit=3) == examples[:3]


@pytest.mark.parametrize("name", FILES)
def test_every_style_ending_is_judged(name: str) -> None:
    """The gold rendered in each style extracts and is correct; another answer is judged wrong."""
    task = get_task(name)
    for e in task.load(str(SAMPLES / f"{FILES[name]}.jsonl")):
        wrong = task.wrong_answer(e)
        assert not task.is_correct(wrong, e), (e.id, wrong)
        for style in STYLES:
            text = task.render_final(e, style)
            assert task.is_correct(task.extract(text, e), e), (e.id, style, text)
            pred = task.extract(task.render_final(e, style, answer=wrong), e)
            assert pred is not None and not task.is_correct(pred, e), (e.id, style, pred)


def test_style_endings_look_like_their_style() -> None:
    task, e = get_task("gsm8k"), generate_synthetic(1, 0)[0]
    program = task.render_final(e, "program")
    assert "```python" in program and "print(" in program and program.endswith(f"Output: {e.gold}")
    backward = task.render_final(e, "backward")
    assert "candidate" in backward and backward.endswith(f"The verified answer is {e.gold}.")
    with pytest.raises(ValueError, match="unknown style 'haiku'"):
        task.render_final(e, "haiku")


def test_date_options_sorted_not_gold_first() -> None:
    examples = get_task("date_understanding").load(str(SAMPLES / "date_understanding.jsonl"))
    assert len({e.gold for e in examples}) >= 3  # the release lists the correct option first
    for e in examples:
        texts = [t for _, t in e.choices]
        assert texts == sorted(texts) and [lab for lab, _ in e.choices] == list("ABCDEF"[: len(texts)])


HUB = {
    "arc_challenge": ({"id": "Mercury_1", "question": "Which of these is a gas at room temperature?",
                       "choices": {"text": ["ice", "steam", "wood", "iron"], "label": ["A", "B", "C", "D"]},
                       "answerKey": "B"}, "B"),
    "anli": ({"uid": "u1", "premise": "The cat sat on the mat.", "hypothesis": "The mat is empty.", "label": 2,
              "reason": ""}, "contradiction"),
    "gsm8k": ({"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"}, "7"),
    "math": ({"problem": "Compute $1/2 + 0$.", "solution": "It is $\\boxed{\\frac12}$.", "answer": "\\frac{1}{2}",
              "subject": "Algebra", "level": 3, "unique_id": "test/algebra/1.json"}, "\\frac{1}{2}"),
    "strategyqa": ({"qid": "q1", "term": "Pi", "description": "constant", "question": "Is pi larger than 3?",
                    "answer": True, "facts": "Pi is 3.14...", "decomposition": "What is pi?"}, "yes"),
    "date_understanding": ({"inputs": "Q: Today is 05/01/2021. What is the date tomorrow in MM/DD/YYYY?\nA:",
                            "targets": ["05/02/2021"],
                            "multiple_choice_targets": ["05/02/2021", "04/30/2021", "05/12/2021"],
                            "multiple_choice_scores": [1, 0, 0], "idx": 7}, "B"),
}


@pytest.mark.parametrize("name", HUB)
def test_hub_records(name: str) -> None:
    rec, gold = HUB[name]
    e = get_task(name).from_record(rec)
    assert e.gold == gold
    if name == "math":
        assert e.level == "Level 3" and e.id == "test/algebra/1.json"
    if name == "arc_challenge":
        assert e.choices[1] == ("B", "steam") and "(B) steam" in e.question
    if name == "date_understanding":  # sorted: 04/30, 05/02, 05/12
        assert e.choices == [("A", "04/30/2021"), ("B", "05/02/2021"), ("C", "05/12/2021")]


def test_other_hub_variants() -> None:
    bbh = {"input": "Today is 05/01/2021. What is the date tomorrow?\nOptions:\n(A) 04/30/2021\n(B) 05/02/2021",
           "target": "(B)"}
    e = get_task("date_understanding").from_record(bbh)
    assert e.gold == "B" and e.choices == [("A", "04/30/2021"), ("B", "05/02/2021")]
    assert get_task("strategyqa").from_record({"question": "Q?", "answer": "No"}).gold == "no"
    assert get_task("anli").from_record({"premise": "p", "hypothesis": "h", "label": 0}).gold == "entailment"
    release_math = {"problem": "p", "solution": "so $\\boxed{\\frac{a}{b}}$ and done", "level": "Level 2"}
    assert get_task("math").from_record(release_math).gold == "\\frac{a}{b}"


def test_parquet_through_datasets(tmp_path: Path) -> None:
    """Arrow fills each row's target_scores with every row's options (as None): they must not leak."""
    import datasets

    rows = [json.loads(line) for line in (SAMPLES / "date_understanding.jsonl").read_text().splitlines()[:5]]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "date.parquet"))
    task = get_task("date_understanding")
    assert task.load(str(tmp_path / "date.parquet")) == task.load(str(SAMPLES / "date_understanding.jsonl"), limit=5)


def test_malformed_input_names_file_line_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    good = (SAMPLES / "gsm8k.jsonl").read_text().splitlines()[0]
    bad.write_text(good + "\n" + '{"question": "x"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: .*field 'answer'"):
        get_task("gsm8k").load(str(bad))
    bad.write_text(good + "\n\n{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: not valid JSON"):
        get_task("gsm8k").load(str(bad))
    bad.write_text('{"id": "x", "question": {"stem": "s", "choices": [{"text": "a", "label": "A"}]}, "answerKey": "C"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: .*answerKey"):
        get_task("arc_challenge").load(str(bad))
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        get_task("gsm8k").load(str(tmp_path / "missing.jsonl"))
    (tmp_path / "data.csv").write_text("question,answer\n")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        get_task("gsm8k").load(str(tmp_path / "data.csv"))


def test_registry() -> None:
    names = [t.name for t in list_tasks()]
    assert names == sorted(["strategyqa", "arc_challenge", "math", "anli", "date_understanding", "gsm8k", "synthetic"])
    for t in list_tasks():
        assert t.description and t.answer_kind and t.instruction
    with pytest.raises(ValueError, match="unknown task 'mmlu'; known tasks: anli, arc_challenge"):
        get_task("mmlu")


def test_synthetic(tmp_path: Path) -> None:
    a, b = generate_synthetic(60, seed=3), generate_synthetic(60, seed=3)
    assert a == b and a != generate_synthetic(60, seed=4)
    assert {e.level for e in a} == {"1", "2", "3"}
    for e in a:
        steps = solve_steps(e)
        assert len(steps) == int(e.level) and steps[-1][1] == int(e.gold)
        assert all(0 <= v <= 99 for _, v in steps)
        assert all(str(eval(expr)) == str(v) for expr, v in steps)  # our own generated arithmetic
    write_synthetic(tmp_path / "syn.jsonl", 60, seed=3)
    assert get_task("synthetic").load(str(tmp_path / "syn.jsonl")) == a


def test_import_is_torch_free() -> None:
    code = "import sys, qr_ds.tasks, qr_ds.tasks.score, qr_ds.tasks.command; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
