"""Synthetic multi-step arithmetic word problems for the CPU demo.

One-digit values (every intermediate and final value in 0..9), operations of one step (one more,
one fewer, doubling), a fixed small vocabulary, and level = number of operations (1-3), so a tiny
randomly-initialised transformer learns the task in minutes. With operands up to 9 and values up
to 99, a tiny student scored 2%: the arithmetic, not the reasoning, was what it could not learn.
Half the questions double at some step (``DOUBLING_SHARE``): the scripted stand-in teacher's one
consistent error is misreading "doubles them" (qr_ds/teacher/scripted.py), and it must touch
enough questions for the answer filter to matter. ``solve_steps`` gives the intermediate
operations, and ``step_phrases`` the words that asked for them, for scripted teachers.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

from qr_ds.data.jsonl import RecordError, write_jsonl
from qr_ds.tasks.base import Example, register, require
from qr_ds.tasks.gsm8k import NumberTask

NAMES = ("Ava", "Ben", "Mia", "Leo", "Zoe", "Sam")
OBJECTS = ("marbles", "apples", "stickers", "coins", "books", "shells")
# (operation, phrase): the phrase follows "She"/"He" in the first clause and "then" afterwards
OPS = {
    "+": ("gets {n} more", "finds {n} more", "buys {n} more"),
    "-": ("gives away {n}", "loses {n}", "eats {n}"),
    "*": ("doubles them",),
}
_STEP = re.compile(r"(gets|finds|buys) (\d+) more|(gives away|loses|eats) (\d+)|(doubles them)")


MAX_VALUE = 9
DOUBLING_SHARE = 0.5


def _make(rng: random.Random, level: int) -> tuple[int, list[tuple[str, int]]]:
    """A start value and ``level`` operations with every running value in 0..MAX_VALUE; with
    probability DOUBLING_SHARE at least one of them doubles."""
    doubles = rng.random() < DOUBLING_SHARE
    while True:
        value, ops = rng.randint(1, MAX_VALUE), []
        start = value
        for _ in range(level):
            op = rng.choice("++--*" if 2 * value <= MAX_VALUE else "+--")
            n = 2 if op == "*" else 1
            value = value * 2 if op == "*" else value + n if op == "+" else value - n
            ops.append((op, n))
        if (("*", 2) in ops) == doubles and all(0 <= v <= MAX_VALUE for v in _running(start, ops)):
            return start, ops


def _running(start: int, ops: list[tuple[str, int]]) -> list[int]:
    out, v = [], start
    for op, n in ops:
        v = v * n if op == "*" else v + n if op == "+" else v - n
        out.append(v)
    return out


def generate_synthetic(n: int, seed: int) -> list[Example]:
    """``n`` problems, identical for the same seed, levels cycling 1, 2, 3."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        level = i % 3 + 1
        start, ops = _make(rng, level)
        name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
        pron = "She" if name in ("Ava", "Mia", "Zoe") else "He"
        phrases = [rng.choice(OPS[op]).format(n=k) for op, k in ops]
        story = f"{pron} {phrases[0]}" + "".join(f" and then {p}" for p in phrases[1:])
        question = f"{name} has {start} {obj}. {story}. How many {obj} does {name} have now?"
        out.append(Example(id=f"synthetic-{seed}-{i}", task="synthetic", question=question,
                           gold=str(_running(start, ops)[-1]), level=str(level)))
    return out


def write_synthetic(path: str | Path, n: int, seed: int) -> int:
    """Write ``n`` generated problems as JSONL (fields: id, question, answer, level)."""
    rows = ({"id": e.id, "question": e.question, "answer": int(e.gold), "level": e.level}
            for e in generate_synthetic(n, seed))
    return write_jsonl(path, rows)


def solve_steps(example: Example) -> list[tuple[str, int]]:
    """The operations in order as (expression, result), e.g. [("7 + 5", 12), ("12 - 3", 9)]."""
    m = re.match(r"\w+ has (\d+) ", example.question)
    if not m:
        raise ValueError(f"{example.id}: not a synthetic question: {example.question[:60]!r}")
    value, steps = int(m.group(1)), []
    for s in _STEP.finditer(example.question):
        if s.group(2):
            expr, value = f"{value} + {s.group(2)}", value + int(s.group(2))
        elif s.group(4):
            expr, value = f"{value} - {s.group(4)}", value - int(s.group(4))
        else:
            expr, value = f"{value} * 2", value * 2
        steps.append((expr, value))
    return steps


def step_phrases(example: Example) -> list[str]:
    """The words of each operation in order, e.g. ["gives away 1", "doubles them"]."""
    return [m.group(0) for m in _STEP.finditer(example.question)]


@register
class Synthetic(NumberTask):
    name = "synthetic"
    description = "Synthetic 1-3 step arithmetic word problems (answers 0-9) for the CPU demo"
    instruction = "Let's think step by step. End with 'The answer is N.'"

    def from_record(self, rec: dict) -> Example:
        answer = require(rec, "answer", "gold")
        if isinstance(answer, bool) or not str(answer).lstrip("-").isdigit():
            raise RecordError("answer", f"expected an integer, got {answer!r}")
        level = rec.get("level")
        return Example(id=str(rec.get("id", "")), task=self.name, question=str(require(rec, "question")),
                       gold=str(int(answer)), level=str(level) if level is not None else None)
