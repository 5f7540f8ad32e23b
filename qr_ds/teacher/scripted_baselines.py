"""The scripted stand-in teacher's replies to the Table 1 baselines' templates (qr_ds/data/baselines.py),
on the synthetic task only, deterministic per (seed, request), with planted faults where a check
must catch them:

- rephrase: the same story in other words (the answer stays, so the original's gold is the gold);
- new_question: a fresh synthetic question, whose stated answer is off by one in ``wrong_rate`` of
  the replies: the solving call then disagrees with it and the filter drops the question;
- backward_question: the story told from its end ("... and ends with 8 marbles. How many marbles did
  Ava have at the start?"), its stated answer off by one in ``wrong_rate`` of the replies;
- backward_reasoning: the backward question solved by undoing each operation from the last, undoing
  "doubles them" by taking two away in ``wrong_rate`` of the paths (the teacher's misreading, run
  backwards): a wrong answer the answer check catches.
"""
from __future__ import annotations

import random
import re

from qr_ds.tasks import solve_steps, step_phrases
from qr_ds.tasks.synthetic import generate_synthetic
from qr_ds.teacher.base import Request

_STORY = re.compile(r"(\w+) has (\d+) (\w+)\. (She|He) ")
_ENDS_WITH = re.compile(r"\w+ has some \w+\. (?:She|He) .+, and ends with (\d+) \w+\.")
_UNDO = {"+": "-", "-": "+", "*": "/"}


def _rng(teacher, req: Request) -> random.Random:
    if req.context["task"].name != "synthetic":
        raise ValueError(f"the scripted stand-in teacher writes for the synthetic task only, not "
                         f"{req.context['task'].name!r}")
    return random.Random(f"{teacher.cfg.sampling.seed}|{req.key}")


def _story(ex) -> tuple[str, int, str, str, list[str]]:
    name, start, obj, pron = _STORY.match(ex.question).groups()
    return name, int(start), obj, pron, step_phrases(ex)


def _stated(teacher, rng: random.Random, answer: int) -> int:
    """The answer a writer states: off by one in ``wrong_rate`` of its replies."""
    return answer + rng.choice((1, -1)) if rng.random() < teacher.cfg.scripted.wrong_rate else answer


def rephrase(teacher, req: Request) -> str:
    _rng(teacher, req)
    name, start, obj, pron, phrases = _story(req.context["example"])
    return (f"Rephrased question: {name} has {start} {obj} at first. Next {pron.lower()} "
            f"{' and after that '.join(phrases)}. What number of {obj} does {name} end up with?")


def new_question(teacher, req: Request) -> str:
    rng = _rng(teacher, req)
    ex = generate_synthetic(rng.randint(1, 3), rng.randrange(2 ** 31))[-1]
    return f"New question: {ex.question}\nAnswer: {_stated(teacher, rng, int(ex.gold))}"


def backward_question(teacher, req: Request) -> str:
    rng = _rng(teacher, req)
    ex = req.context["example"]
    name, start, obj, pron, phrases = _story(ex)
    end = solve_steps(ex)[-1][1]
    return (f"Backward question: {name} has some {obj}. {pron} {' and then '.join(phrases)}, and ends with {end} "
            f"{obj}. How many {obj} did {name} have at the start?\nAnswer: {_stated(teacher, rng, start)}")


def backward_reasoning(teacher, req: Request) -> str:
    rng = _rng(teacher, req)
    ex = req.context["example"]
    m = _ENDS_WITH.match(ex.question)
    if not m:
        raise ValueError(f"{ex.id}: not a backward question of the synthetic task: {ex.question[:60]!r}")
    value = int(m.group(1))
    misread = rng.random() < teacher.cfg.scripted.wrong_rate
    lines = ["Undo the operations from the last one to the first.", f"At the end there are {value}."]
    for phrase in reversed(step_phrases(ex)):
        op, b = _operation(phrase)
        undo, b = ("-", 2) if misread and op == "*" else (_UNDO[op], b)
        prev = value - b if undo == "-" else value + b if undo == "+" else value // b
        lines.append(f"undo {phrase}: {value} {undo} {b} = {prev}.")
        value = prev
    return "\n".join([*lines, f"The answer is {value}."])


def _operation(phrase: str) -> tuple[str, int]:
    """("*", 2) for "doubles them", ("+", n) for "gets n more", ("-", n) for "gives away n"."""
    if phrase == "doubles them":
        return "*", 2
    n = int(re.search(r"\d+", phrase).group())
    return ("+", n) if phrase.endswith("more") else ("-", n)


REPLIES = {"rephrase": rephrase, "new_question": new_question, "backward_question": backward_question,
           "backward_reasoning": backward_reasoning}
