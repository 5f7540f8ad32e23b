"""Answer checkers against real teacher responses: our verdict must equal the reference verdict on
>= 99% of each task's records, on the half used while writing the rules and on the held-out half;
and the phrasing rules those responses taught, on sentences of their kind."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from qr_ds.tasks import get_task

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "teacher_outputs"
TASKS = {"date": "date_understanding", "arc": "arc_challenge", "gsm8k": "gsm8k", "strategyqa": "strategyqa",
         "anli": "anli"}
HALVES = {"developed on": 0, "held out": 1}


def agreement(file: str, half: int) -> tuple[int, int, list[str]]:
    """(agreeing records, records, disagreements as 'line: extracted vs reference') of one half."""
    task = get_task(TASKS[file])
    lines = (FIXTURES / f"{file}.jsonl").read_text(encoding="utf-8").splitlines()
    agree, misses = 0, []
    for lineno in range(half + 1, len(lines) + 1, 2):
        rec = json.loads(lines[lineno - 1])
        example = task.from_record(rec)
        pred = task.extract(rec["response"], example)
        if task.is_correct(pred, example) == rec["ref_correct"]:
            agree += 1
        else:
            misses.append(f"{file}.jsonl:{lineno}: extracted {pred!r}, reference {rec['ref_answer']!r}")
    return agree, len(lines[half::2]), misses


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("file", TASKS)
def test_agrees_with_reference_verdicts(file: str, half: str) -> None:
    agree, n, misses = agreement(file, HALVES[half])
    assert n >= 20 and agree / n >= 0.99, "\n".join(misses)


STRATEGYQA = get_task("strategyqa").from_record({"qid": "q", "question": "Is the sky blue?", "answer": "True"})
ANLI = get_task("anli").from_record({"uid": "u", "premise": "Tom is six.", "hypothesis": "Tom is a child.",
                                     "label": "entailment"})


@pytest.mark.parametrize("response,expected", [
    ("1. Rayleigh scattering favours short wavelengths.\n\nTherefore, Yes.", "yes"),
    ("1. Blue light scatters most.\n2. So the sky looks blue.\n\nYes", "yes"),
    ("Sunsets are red, but the daytime sky is not.\n\nNo.\n", "no"),
    ("Thus, **No**.", "no"),
    ("Conclusion: yes. The scattering argument holds at noon everywhere.", "yes"),
    ("Hence: Definitely yes.", "yes"),
    ("So the answer is **yes**.\n\nNote: at night the sky is black, which the question does not ask about.", "yes"),
    ("The statement is **False**.", "no"),
    ("The claim is not true.", "no"),
    ("No one doubts the physics here, yet the question is ill-posed.", None),  # "No" as a word, not a verdict
    ("Therefore, no clear answer follows from these facts.", None),
    ("**Yes or no?** It depends on the time of day.", None),
])
def test_yes_no_phrasing(response: str, expected: str | None) -> None:
    assert get_task("strategyqa").extract(response, STRATEGYQA) == expected


@pytest.mark.parametrize("response,expected", [
    ('Therefore, the statement "Tom is a child" is **False**.', "contradiction"),
    ('So the hypothesis "Tom is a child, as is his sister" is true.', "entailment"),
    ("Final Answer: **Neither**", "neutral"),
    ("Conclusion: **Neither**.  The passage never gives his age in years, only his school.", "neutral"),
    ("Therefore, the answer is **True**.\n\nThis assumes six-year-olds count as children.", "entailment"),
    ("The statement is not necessarily true.", "neutral"),
    ("The statement isn't true: Tom is an adult.", "contradiction"),
    ("3. **Contradiction:** the ages do not match.\n\nFinal Answer: True", "entailment"),
    ("3. **Contradiction:** the passage calls him a retiree.", None),  # a heading, not a verdict
    ("True", "entailment"),
    ("The answer is: it cannot be determined.", "neutral"),
    ("4. **Determine if the statement is true or false:** Since 65 is not 55, the", None),  # asks, says nothing
    ("The statement is false or at best unsupported.", "contradiction"),
])
def test_nli_phrasing(response: str, expected: str | None) -> None:
    assert get_task("anli").extract(response, ANLI) == expected


ARC = get_task("arc_challenge").from_record({"id": "a", "question": "Which is a mammal?", "answerKey": "B",
                                             "choices": {"text": ["shark", "whale"], "label": ["A", "B"]}})


@pytest.mark.parametrize("response,expected", [
    ("Let's examine each answer choice:\n\nA. **shark** is a fish.", None),  # a list of the options opens
    ("Let's examine every answer option:\n\n* A. a shark breathes through gills.", None),
    ("Each answer choice: A. is a fish.\n\nSo the answer is B.", "B"),
    ("A shark is a fish.\n\nThe answer choice is B.", "B"),
    ("Answer: B", "B"),
])
def test_choice_phrasing(response: str, expected: str | None) -> None:
    assert get_task("arc_challenge").extract(response, ARC) == expected


@pytest.mark.parametrize("file", TASKS)
def test_a_right_response_cut_anywhere_states_no_wrong_answer(file: str) -> None:
    """data.drop_cut_wrong on real teachers: none of them states a wrong interim answer, so the check
    must fire on no prefix of a right response, cut after any of its characters (202,495 cuts in
    all). Reading a cut text whole fired on 335 of every 7th (a step "1." as the bare answer 1, a
    number cut short); "each answer choice:" and "is true or false" fired on 308 of them."""
    from qr_ds.testing.real_students import teacher_records
    from qr_ds.train.encoding import cut_states_wrong_answer

    fired = [f"{r.id} cut after {seen} characters: ...{r.response[max(0, seen - 60):seen]!r}"
             for r in teacher_records(file) for seen in range(1, len(r.response))
             if cut_states_wrong_answer(r, len(r.response) - seen)]
    assert not fired, "\n".join(fired[:20])
