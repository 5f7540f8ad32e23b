"""Answer extraction on hand-written, real-looking model outputs, and MATH equivalence."""
from __future__ import annotations

import pytest

from qr_ds.tasks import Example, get_task, list_tasks
from qr_ds.tasks.equiv import math_equiv

ARC = get_task("arc_challenge").from_record({
    "id": "Mercury_SC_413624",
    "question": {"stem": "How is energy changed when a person starts to jog?", "choices": [
        {"text": "Motion changes to stored energy.", "label": "A"},
        {"text": "Stored energy changes to motion and heat.", "label": "B"},
        {"text": "Heat changes to motion and stored energy.", "label": "C"},
        {"text": "Motion changes to chemical energy.", "label": "D"}]},
    "answerKey": "B"})
ARC_NUMERIC = get_task("arc_challenge").from_record({
    "id": "NYSEDREGENTS_2015_8_1", "question": {"stem": "Which is a renewable resource?", "choices": [
        {"text": "coal", "label": "1"}, {"text": "oil", "label": "2"},
        {"text": "wind", "label": "3"}, {"text": "natural gas", "label": "4"}]},
    "answerKey": "3"})
DATE = get_task("date_understanding").from_record({
    "input": "Jane was born on the last day of Feburary in 2000. Today is her 16-year-old birthday. "
             "What is the date yesterday in MM/DD/YYYY?",
    "target_scores": {"02/28/2016": 1, "04/28/2016": 0, "11/28/2015": 0, "02/21/2016": 0,
                      "03/13/2016": 0, "06/01/2016": 0}, "id": "date-56"})
GSM = get_task("gsm8k").from_record({
    "question": "Billy has 60 potatoes; peeling takes 1.5 minutes and cutting 5 seconds each. How long in total?",
    "answer": "60 * 1.5 = <<60*1.5=90>>90 minutes.\n5 * 60 / 60 = 5 minutes.\n#### 95"})
MATH = Example(id="t/1", task="math", question="What is $\\sin 30^\\circ$?", gold="\\frac{1}{2}")
SQA = get_task("strategyqa").from_record({
    "qid": "1eb877fa5b2962f5e5a9", "question": "Was a woman Prime Minister directly before or after Stanley Baldwin?",
    "answer": False})
NLI = get_task("anli").from_record({
    "uid": "8112472b", "premise": "A speeding vehicle hit a 40-year-old woman in Karachi; separately a man died.",
    "hypothesis": "When multiple people are killed in road accidents in Karachi, at least one is a woman.",
    "label": "neutral"})

CASES: dict[str, tuple[Example, list[tuple[str, str | None]]]] = {
    "arc_challenge": (ARC, [
        ("When a person starts to jog, chemical energy in the body becomes kinetic energy and heat.\n"
         "The answer is (B).", "B"),
        ("**Answer:** B", "B"),
        ("Option A is wrong since motion is the result. Option C reverses the direction, and D ignores heat.\n"
         "Therefore, the correct choice is B.", "B"),
        ("The answer is (A).\nWait, stored energy becomes motion, and the body heats up. So the answer is (B).", "B"),
        ("B", "B"),
        ("(B).", "B"),
        ("I think the energy changes somehow, but I am not sure which option fits best.", None),
        ("Jogging converts energy; A and C both mention motion, while D mentions chemical energy.", None),
        ("The answer is: Stored energy changes to motion and heat.", "B"),
        ("Final answer: \\boxed{B}", "B"),
        ("The correct option is B) Stored energy changes to motion and heat.", "B"),
        ("Answer:\nB", "B"),
        ("Forward reasoning suggests (B). Backward check: if stored energy becomes motion and heat, the jogger "
         "warms up, which matches. The verified answer is B.", "B"),
        ("```python\nchoices = {'A': 'motion to stored', 'B': 'stored to motion and heat'}\nprint('B')\n```\n"
         "Output: B", "B"),
        ("The answer is E.", None),
        ("The answer is motion and heat from stored energy, i.e. stored energy changes to motion and heat.", "B"),
    ]),
    "date_understanding": (DATE, [
        ("Her 16th birthday is 02/29/2016 since 2016 is a leap year, so yesterday was 02/28/2016. "
         "So the answer is (B).", "B"),
        ("The answer is 02/28/2016.", "B"),
        ("The answer is 2/28/2016.", "B"),
        ("Answer: (F) 11/28/2015", "F"),
        ("Today is 02/29/2016, so yesterday is 02/28/2016.", None),
        ("**The answer is (B).**", "B"),
        ("Options (A) and (D) are too far off. The answer is (B).", "B"),
        ("The answer is (A). Actually 2016 is a leap year, so yesterday was Feb 28. The correct answer is (B).", "B"),
        ("B", "B"),
        ("```python\nfrom datetime import date, timedelta\nd = date(2016, 2, 29) - timedelta(days=1)\n"
         "print(d.strftime('%m/%d/%Y'))\n```\nOutput:\n```\n02/28/2016\n```", "B"),
        ("d = date(2016, 2, 29) - timedelta(days=1)\nprint(d.strftime('%m/%d/%Y'))  # 02/28/2016", "B"),
        ("Candidate: (B) 02/28/2016. Verification: one day after 02/28/2016 is 02/29/2016, her birthday in a "
         "leap year. Verified answer: (B).", "B"),
        ("The answer is (G).", None),
        ("Final answer: \\boxed{B}", "B"),
        ("Path 1 gives 02/28/2016; Path 2 gives 03/01/2016 (wrong, 2016 is a leap year). The best choice is (B).",
         "B"),
        ("I cannot determine the date from this.", None),
    ]),
    "gsm8k": (GSM, [
        ("Peeling: 60 * 1.5 = 90 minutes. Cutting: 60 * 5 = 300 seconds = 5 minutes. Total 90 + 5 = 95 minutes.\n"
         "The answer is 95.", "95"),
        ("#### 95", "95"),
        ("Total = 90 + 5 = 95 minutes", None),
        ("95", "95"),
        ("The answer is 95 minutes.", "95"),
        ("**Answer:** 95 minutes", "95"),
        ("Final answer: \\boxed{95}", "95"),
        ("The answer is 90. Wait, I forgot the cutting time: 90 + 5 = 95. So the final answer is 95.", "95"),
        ("```python\npeel = 60 * 1.5\ncut = 60 * 5 / 60\nprint(peel + cut)\n```\nOutput: 95.0", "95"),
        ("print(int(60 * 1.5 + 60 * 5 / 60))  # 95", "95"),
        ("peel = 90\ncut = 5\nThe program prints 95.", "95"),
        ("The answer is $1,095.", "1095"),
        ("Forward: the candidate answer is 95 minutes. Backward: 95 - 5 = 90 minutes of peeling, and 90 / 60 = 1.5 "
         "minutes per potato, which matches. The verified answer is 95.", "95"),
        ("The answer is: 90 + 5 = 95", "95"),
        ("I'm not sure how long it takes; maybe around 100 minutes or so.", None),
        ("Answer: 9.50", "9.5"),
        ("The answer is \u22123.", "-3"),
    ]),
    "math": (MATH, [
        ("We know $\\sin 30^\\circ = \\frac{1}{2}$.\nFinal answer: $\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}"),
        ("The answer is $\\dfrac12$.", "\\dfrac12"),
        ("The answer is 0.5.", "0.5"),
        ("Therefore $\\sin 30^\\circ = 0.5$.", None),
        ("\\boxed{\\tfrac{1}{2}}", "\\tfrac{1}{2}"),
        ("First guess: $\\boxed{\\frac{\\sqrt{3}}{2}}$. That is the cosine, not the sine. "
         "Correct: $\\boxed{\\frac12}$.", "\\frac12"),
        ("**Answer:** $\\frac{1}{2}$", "\\frac{1}{2}"),
        ("```python\nimport math\nprint(round(math.sin(math.radians(30)), 6))\n```\nOutput: 0.5", "0.5"),
        ("Backward check: $\\arcsin(1/2) = 30^\\circ$, as required. The verified answer is $\\frac{1}{2}$.",
         "\\frac{1}{2}"),
        ("1/2", "1/2"),
        ("The answer is \\(\\frac{1}{2}\\).", "\\frac{1}{2}"),
        ("So the answer is $\\frac{1}{3}$.", "\\frac{1}{3}"),
        ("The final answer is \\boxed{\\left(\\frac{1}{2}\\right)}", "\\left(\\frac{1}{2}\\right)"),
        ("I don't know how to solve this.", None),
        ("The answer is $\\frac{1}{2}$ since the opposite side is half the hypotenuse.", "\\frac{1}{2}"),
        ("The answer is the ratio of the opposite side to the hypotenuse.", None),
        ("The answer is below.", None),
    ]),
    "strategyqa": (SQA, [
        ("Baldwin was preceded by MacDonald and succeeded by Chamberlain, both men. So the answer is no.", "no"),
        ("The answer is No.", "no"),
        ("**Answer:** Yes", "yes"),
        ("Yes", "yes"),
        ("no.", "no"),
        ("Thus, the answer is yes. Wait, Thatcher came much later, so the answer is no.", "no"),
        ("Both Ramsay MacDonald and Neville Chamberlain were men, so no woman held the office then.", None),
        ("Output: False", "no"),
        ("woman_before = False\nwoman_after = False\nprint(woman_before or woman_after)  # False", "no"),
        ("Forward: candidate is no. Backward: if a woman had been PM then, she would be famous; none is. "
         "The verified answer is no.", "no"),
        ("Final answer: \\boxed{no}", "no"),
        ("The answer is: No, because both were men.", "no"),
        ("I am not sure.", None),
        ("Answer: definitely yes", "yes"),
        ("The answer is true.", "yes"),
        ("The program prints True", "yes"),
    ]),
    "anli": (NLI, [
        ("The premise describes one accident with a woman; it says nothing about others. The answer is neutral.",
         "neutral"),
        ("The answer is: entailment", "entailment"),
        ("**Answer:** Contradiction", "contradiction"),
        ("The hypothesis holds given the premise. The answer is true.", "entailment"),
        ("The answer is false.", "contradiction"),
        ("The answer is neither.", "neutral"),
        ("The hypothesis cannot be determined from the premise, so the answer is neutral.", "neutral"),
        ("The answer is entailment. On reflection, the premise says nothing about other accidents, "
         "so the answer is neutral.", "neutral"),
        ("The premise mentions a woman, which might entail the hypothesis.", None),
        ("neutral", "neutral"),
        ("Label: contradiction", "contradiction"),
        ("The relationship is entailment.", "entailment"),
        ("The answer is: it cannot be determined.", "neutral"),
        ("The verified answer is contradiction.", "contradiction"),
        ("The answer is that the hypothesis is not entailed.", "neutral"),
        ("Final answer: \\boxed{\\text{neutral}}", "neutral"),
        ("Output: Neither", "neutral"),
    ]),
}


BENCHMARKS = [t.name for t in list_tasks() if t.name != "synthetic"]  # synthetic's outputs are generated


@pytest.mark.parametrize("task", BENCHMARKS)
def test_every_benchmark_has_cases_its_extractor_must_answer_and_refuse(task: str) -> None:
    """Every registered benchmark has at least 15 cases here, and its extractor finds an answer in some
    and refuses others: a task registered without cases, or an extractor that always or never answers,
    fails here."""
    assert task in CASES, f"task {task!r} is registered but has no extraction cases"
    example, cases = CASES[task]
    got = [get_task(task).extract(output, example) for output, _ in cases]
    assert len(cases) >= 15
    assert None in got and any(g is not None for g in got), got


@pytest.mark.parametrize("task,i", [(t, i) for t, (_, cs) in CASES.items() for i in range(len(cs))])
def test_extract(task: str, i: int) -> None:
    example, cases = CASES[task]
    output, expected = cases[i]
    assert get_task(task).extract(output, example) == expected, output


def test_judgement() -> None:
    t = get_task("math")
    correct = [o for o, e in CASES["math"][1] if e is not None and "1}{3" not in e]
    assert all(t.is_correct(t.extract(o, MATH), MATH) for o in correct)
    assert not t.is_correct(t.extract("So the answer is $\\frac{1}{3}$.", MATH), MATH)
    assert not t.is_correct(None, MATH)
    g = get_task("gsm8k")
    assert g.is_correct("95.0", GSM) and not g.is_correct("1095", GSM)
    assert get_task("arc_challenge").extract("The answer is C.", ARC_NUMERIC) == "3"
    assert get_task("arc_challenge").extract("The answer is (3) wind.", ARC_NUMERIC) == "3"
    assert get_task("arc_challenge").extract("The answer is wind.", ARC_NUMERIC) == "3"
    assert get_task("strategyqa").is_correct("NO", SQA)


@pytest.mark.parametrize("a,b", [
    ("\\frac{1}{2}", "\\dfrac12"), ("\\dfrac12", "0.5"), ("\\frac{1}{2}", "0.5"),
    ("\\left(1,2\\right)", "(1,2)"), ("90^\\circ", "90"), ("90^{\\circ}", "90"), ("5\\text{ cm}", "5"),
    ("3.0", "3"), ("\\sqrt{2}/2", "\\frac{\\sqrt2}{2}"), ("\\tfrac{3}{4}", ".75"), ("\\$5", "5"),
    ("1,\\!000,\\!000", "1000000"), ("10\\%", "10"), ("x^2+2x", "2x+x^2"), ("2\\pi", "\\pi\\cdot 2"),
    ("\\text{(C)}", "(C)"), ("x=5", "5"), ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt3}"), ("$3$", "3"),
])
def test_math_equivalent(a: str, b: str) -> None:
    assert math_equiv(a, b) and math_equiv(b, a)


@pytest.mark.parametrize("a,b", [
    ("1", "2"), ("(1,2)", "(2,1)"), ("[1,2)", "(1,2)"), ("\\text{(C)}", "\\text{(D)}"), ("x", "y"),
    ("\\frac{1}{2}", "0.51"), ("no", "on"), ("\\frac{{{", "1"), ("\\sqrt{", "x"), ("", "1"), ("3+5i", "3-5i"),
    ("1,\\!000,\\!000,\\!000", "1000000001"),
])
def test_math_not_equivalent(a: str, b: str) -> None:
    assert not math_equiv(a, b)


# ---- bounded work: 1 MB adversarial outputs (timings: the report of issue 23; here only the answers) ----
MB = 1 << 20


def _fill(unit: str) -> str:
    return unit * (MB // len(unit))


ADVERSARIAL = [  # (task, example, 1 MB of a shape that was quadratic or worse, the answer stated after it)
    ("math", MATH, _fill("\\boxed{"), "So the answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("math", MATH, "\\boxed{" * (MB // 8) + "}" * (MB // 8), "\n\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("math", MATH, _fill("The answer is \\("), "\nThe answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
    ("gsm8k", GSM, _fill("answer: "), "\n#### 95", "95"),
    ("gsm8k", GSM, _fill("Output:\n"), "\n#### 95", "95"),
    ("gsm8k", GSM, _fill("#### \n") + "\n" * MB, "#### 95", "95"),
    ("arc_challenge", ARC, _fill("print("), "\nThe answer is (B).", "B"),
    ("arc_challenge", ARC, _fill("answer: !" + " " * 480 + "\n"), "The answer is (B).", "B"),
    ("strategyqa", SQA, _fill("Yes.\n"), "\nSo the answer is: no", "no"),
    ("anli", NLI, "The statement is " + " " * MB, "\nThe answer is: neutral", "neutral"),
    ("anli", NLI, _fill("the hypothesis was " + "a" * 500 + " "), "\nThe answer is: neutral", "neutral"),
    ("date_understanding", DATE, _fill("{"), "\nThe answer is 02/28/2016.", DATE.gold),
]


@pytest.mark.timeout(120)  # a guard only: the quadratic scans took hours on a megabyte
@pytest.mark.parametrize("task,example,noise,ending,expected", ADVERSARIAL,
                         ids=[f"{t}-{i}" for i, (t, *_) in enumerate(ADVERSARIAL)])
def test_a_megabyte_of_adversarial_output_still_yields_the_final_answer(task, example, noise, ending, expected):
    assert len(noise) >= MB - 1024
    assert get_task(task).extract(noise + ending, example) == expected
    assert get_task(task).extract(noise, example) != expected  # the answer comes from the ending


def test_long_boxed_content_is_not_an_answer_and_a_short_one_after_it_is():
    from qr_ds.tasks.extract import CANDIDATE_CHARS, last_boxed

    assert last_boxed("\\boxed{" + "x" * (CANDIDATE_CHARS + 1) + "}") is None
    assert last_boxed("\\boxed{1}\\boxed{" + "x" * (CANDIDATE_CHARS + 1) + "}") == "1"
    assert last_boxed("\\boxed{\\boxed{2}}") == "2" and last_boxed("\\boxed{}\\boxed 7") == "7"
