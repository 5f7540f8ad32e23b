"""ScriptedTeacher: a scripted, offline STAND-IN for a real black-box teacher (and judge).

No proprietary teacher can be reached here, so tests and CPU demos use this one, on the
``synthetic`` task only. Every record it writes names it (``MODEL_NAME``). Its paths are built
from the task's ``solve_steps``, deterministic per (seed, question, style, sample), and carry
three planted faults, so each filter step and the router have work:

- Misreading (wrong final answer): "doubles them" read as "adds two", always the same way, in
  every doubling step of the path (``misread``). A student trained on these learns that rule.
  Planted only where it changes the final answer. The quick styles misread in three paths of
  four, the long ones in one of ten (``MISREAD_FACTOR``): after the answer filter, doubling is
  taught mostly by the long styles, which a short-context student cannot learn from, so it is
  knowledge its long-context peer holds and it may lack. (Misreading every quick path left a
  student on the quick styles almost nothing to learn doubling from: 29% right on doubling
  questions, one seed.)
- A false intermediate value (right final answer): one step's result is off by one, later steps
  use it, and the last step slips back to the right answer. Such a path teaches wrong arithmetic
  and only a judge that checks each step can catch it.
- An unused false sentence (``SPURIOUS``, right final answer): harmless, but a judge flags it.

The long styles (``LONG_STYLES``: tree-of-thought, fact retrieval, backward) restate the question
and plan, recall or set conditions before any arithmetic, and verify after it, so their paths are
several times longer than the quick styles': a student whose context is shorter sees none of their
arithmetic and never their answer line. (When their first steps fell inside the short context,
that student learned arithmetic from the cut paths: 0.97 accuracy on all six styles against 0.88
on the quick ones alone, two seeds.)

As a judge it does what a real judge would on these paths: it recomputes every "a op b = c" it
can parse and names the first false one, and it flags the false facts of ``SPURIOUS``.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Iterable

from qr_ds.tasks import solve_steps, step_phrases
from qr_ds.teacher.base import Completion, OnDone, Request
from qr_ds.teacher.config import TeacherConfig

MODEL_NAME = "scripted stand-in teacher (not an LLM)"
QUICK_STYLES = ("vanilla", "cot", "program")
LONG_STYLES = ("tot", "fact_retrieval", "backward")
# x wrong_rate = probability that a path misreads doubling (where that changes its answer)
MISREAD_FACTOR = {**{s: 3.0 for s in QUICK_STYLES}, **{s: 0.4 for s in LONG_STYLES}}
# x spurious_rate = probability that a right-answer path gets a false step
SPURIOUS_FACTOR = {"vanilla": 0.5, "cot": 1.0, "tot": 1.0, "program": 0.5, "fact_retrieval": 2.0, "backward": 1.0}
# Unused false sentences. The judge knows these claims are false (as a real judge knows arithmetic
# facts), so it finds them by their wording.
SPURIOUS = (
    "Recall that {v} is always divisible by 7, which we keep in mind.",
    "By the well-known rule of carrying, we add an extra {v} here and remove it later.",
    "It is a known fact that {v} equals the number of days in a fortnight.",
)
_SPURIOUS_RE = [re.compile(re.escape(t).replace(re.escape("{v}"), r"-?\d+")) for t in SPURIOUS]
OPENERS = {
    "vanilla": "Let me solve this.",
    "cot": "Let's reason step by step.",
    "tot": "Let me consider a few ways to approach this and follow the most promising one.",
    "program": "I will compute this with code, mirroring each operation.",
    "fact_retrieval": "First, the relevant facts: each operation in the question is exact integer arithmetic.",
    "backward": "Forward pass first, then I will check the result backwards.",
}
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}
_EQUATION = re.compile(r"(-?\d+) ([-+*/]) (\d+) = (-?\d+)")
_PROGRAM_LINE = re.compile(r"= (-?\d+) ([-+*/]) (\d+)\s+#[^\n:]*: (-?\d+)")  # x1 = 3 + 1  # gets 1 more: 4
_MISREAD = re.compile(r"doubles them: -?\d+ \+ 2 = |= -?\d+ \+ 2\s+# doubles them")  # prose | program


@dataclass(frozen=True)
class Step:
    phrase: str
    a: int
    op: str
    b: int
    result: int  # as written: false on a slipped step

    def equation(self) -> str:
        return f"{self.a} {self.op} {self.b} = {self.result}"


@dataclass(frozen=True)
class Plan:
    misread: bool  # doubling read as adding two: a wrong final answer
    slip: tuple[int, int] | None  # (step, delta): that step's written result is off (the answer stays right)
    unused: bool  # an unused false sentence (the answer stays right)


def steps_of(example, misread: bool = False, slip: tuple[int, int] | None = None) -> list[Step]:
    """The path's steps. ``misread``: doubling computed as adding two. ``slip`` (i, delta): step i
    writes its result off by delta, later steps compute from it, and the last writes the right answer."""
    solved = solve_steps(example)
    ops = [(expr.split()[1], int(expr.split()[2])) for expr, _ in solved]
    value, gold, out = int(solved[0][0].split()[0]), solved[-1][1], []
    for i, ((op, b), phrase) in enumerate(zip(ops, step_phrases(example))):
        if misread and op == "*":
            op = "+"
        result = _OPS[op](value, b)
        if slip and i == slip[0]:
            result += slip[1]
        if slip and i == len(ops) - 1:
            result = gold
        out.append(Step(phrase, value, op, b, result))
        value = result
    return out


def false_step(text: str) -> tuple[int, str] | None:
    """(1-based line, the judge's reason) of the first line with a false equation or a known-false
    claim, or None."""
    for i, line in enumerate(text.splitlines(), start=1):
        for a, op, b, c in _EQUATION.findall(line) + _PROGRAM_LINE.findall(line):
            if _OPS[op](int(a), int(b)) != int(c):
                return i, f"step {i} writes {a} {op} {b} = {c}, which is false, and later steps build on it"
        if any(r.search(line) for r in _SPURIOUS_RE):
            return i, f"step {i} asserts a fact that is false and unused"
    return None


def spurious_step(text: str) -> int | None:
    """1-based index of the first line a step-checking judge finds false, or None."""
    found = false_step(text)
    return found[0] if found else None


def misread_changes_answer(example) -> bool:
    return steps_of(example, misread=True)[-1].result != int(example.gold)


def misreads_doubling(text: str) -> bool:
    """Whether the path computes "doubles them" as adding two (the teacher's one wrong rule)."""
    return bool(_MISREAD.search(text))


class ScriptedTeacher:
    def __init__(self, cfg: TeacherConfig):
        self.cfg = cfg
        self.model = MODEL_NAME

    def run(self, requests: Iterable[Request], on_done: OnDone) -> None:
        for req in requests:
            if "judge_record" in req.context:
                text = self.judge(req)
            else:
                text = self.path(req)
            on_done(req, Completion(text, tokens_in=len(req.prompt.split()), tokens_out=len(text.split()),
                                    finish_reason="stop"))

    def plan(self, req: Request) -> Plan:
        """What this path gets wrong, deterministic per request."""
        ex, style = req.context["example"], req.context["style"]
        if req.context["task"].name != "synthetic":
            raise ValueError(f"the scripted stand-in teacher writes paths for the synthetic task only, "
                             f"not {req.context['task'].name!r}")
        rng = random.Random(f"{self.cfg.sampling.seed}|{req.key}")
        gold = int(ex.gold)
        misread = (rng.random() < self.cfg.scripted.wrong_rate * MISREAD_FACTOR.get(style, 1.0)
                   and steps_of(ex, misread=True)[-1].result != gold)
        spurious = not misread and rng.random() < self.cfg.scripted.spurious_rate * SPURIOUS_FACTOR.get(style, 1.0)
        slips = [(i, d) for i in range(len(solve_steps(ex)) - 1) for d in (1, -1)
                 if all(0 <= s.result <= 9 for s in steps_of(ex, slip=(i, d)))] if spurious else []
        slip = rng.choice(slips) if slips else None
        return Plan(misread, slip, spurious and not slip)

    def path(self, req: Request) -> str:
        from qr_ds.teacher.scripted_baselines import REPLIES  # the Table 1 baselines' templates

        ex, style = req.context["example"], req.context["style"]
        if style in REPLIES:
            return REPLIES[style](self, req)
        plan = self.plan(req)
        steps = steps_of(ex, plan.misread, plan.slip)
        if style in self.cfg.scripted.harm_styles and not plan.misread and misread_changes_answer(ex):
            return "\n".join(_corrected_late(style, ex, steps, steps_of(ex, misread=True)))
        lines = RENDER[style](ex, steps)
        if plan.unused:
            rng = random.Random(f"{self.cfg.sampling.seed}|{req.key}|text")
            at = rng.randint(1, len(lines) - 1)  # never after the answer line
            lines.insert(at, rng.choice(SPURIOUS).format(v=steps[min(at, len(steps)) - 1].result))
        return "\n".join(lines)

    def judge(self, req: Request) -> str:
        rec = req.context["judge_record"]
        rng = random.Random(f"{self.cfg.sampling.seed}|judge|{rec.id}|{req.seed}")
        if rng.random() < self.cfg.scripted.unparseable_rate:
            return rng.choice(["I would need to look at this more carefully.", "Hmm. Let me think about the steps."])
        bad = false_step(rec.response or "")
        reason = bad[1] if bad else "every step follows from the previous ones"
        verdict = "INVALID" if bad else "VALID"
        forms = [
            lambda: json.dumps({"verdict": verdict, "reason": reason}),
            lambda: f"Verdict: {verdict}\nReason: {reason}",
            lambda: f"**Verdict:** {verdict}\n\n{reason[0].upper() + reason[1:]}.",
            lambda: f"{verdict} - {reason}",
            lambda: f"I checked each step. The reasoning is {'valid' if not bad else 'invalid'}: {reason}.",
        ]
        return rng.choice(forms)()


# ---- the six styles on the synthetic task: each a list of lines, the answer line last ----------
# Each step names the words it acts on: a tiny student then finds the next operation by copying
# what follows the last one (in a plain training loop: 65% accuracy vs 55% without).

def _start(ex) -> int:
    return int(solve_steps(ex)[0][0].split()[0])


def _vanilla(ex, steps: list[Step]) -> list[str]:
    return [OPENERS["vanilla"], *(f"{s.phrase}: {s.equation()}." for s in steps),
            f"The answer is {steps[-1].result}."]


def _cot(ex, steps: list[Step]) -> list[str]:
    return [OPENERS["cot"], *(f"({i}) {s.phrase}: {s.equation()}." for i, s in enumerate(steps, 1)),
            f"So the answer is {steps[-1].result}."]


def _program(ex, steps: list[Step]) -> list[str]:
    return [OPENERS["program"], "```python",
            *(f"x{i} = {s.a} {s.op} {s.b}  # {s.phrase}: {s.result}" for i, s in enumerate(steps, 1)),
            f"print(x{len(steps)})", "```", f"Output: {steps[-1].result}"]


def _tot(ex, steps: list[Step]) -> list[str]:
    # Plans three branches, drops one, then follows two in full: a tree of thoughts explores before it commits.
    answer = steps[-1].result
    return [OPENERS["tot"], f"The question: {ex.question}",
            "Branch 1 will apply each operation in the order the question gives.",
            "Branch 2 will recount from the start, one operation at a time, to see whether Branch 1 slipped.",
            "Branch 3 will guess from the size of the numbers alone.",
            "Branch 3 skips the operations, so it is rejected before it starts.",
            f"Branch 1, we start from {_start(ex)}.", *(f"{s.phrase}: {s.equation()}." for s in steps),
            f"Branch 1 ends at {answer}.",
            f"Branch 2, we start from {_start(ex)}.", *(f"{s.phrase}: {s.equation()}." for s in steps),
            f"Branch 2 ends at {answer}.",
            f"Branches 1 and 2 agree, so they are the most promising.\n**Final answer:** {answer}"]


def _fact_retrieval(ex, steps: list[Step]) -> list[str]:
    # The facts this kind of problem needs: how operations chain, what each phrase means, and the
    # table of each operation used.
    meaning = {"+": "adds {b} to the count", "-": "takes {b} away from the count", "*": "multiplies the count by {b}"}
    facts = [f"Fact: \"{s.phrase}\" {meaning[s.op].format(b=s.b)}." for s in steps]
    tables = {(s.op, s.b): f"Fact: {s.op} {s.b} on small numbers: " + ", ".join(
        f"{a} {s.op} {s.b} = {_OPS[s.op](a, s.b)}" for a in range(6) if 0 <= _OPS[s.op](a, s.b) <= 9) + "."
        for s in steps}
    return [OPENERS["fact_retrieval"], f"The question: {ex.question}",
            "Fact: the operations act one after another, each on the count that the one before it left.",
            "Fact: a count of objects is a whole number, and every count here stays between 0 and 9.",
            f"Fact: the count starts at {_start(ex)}.", *dict.fromkeys(facts), *tables.values(),
            "Now apply the facts in order.", *(f"{s.phrase}: {s.equation()}." for s in steps),
            f"The answer is {steps[-1].result}."]


def _backward(ex, steps: list[Step]) -> list[str]:
    # No answer-like wording before the last line: what a cut path states must not score as an answer.
    undo = {"+": "-", "-": "+", "*": "/"}
    back, value = [], steps[-1].result
    for i, s in reversed(list(enumerate(steps, 1))):
        prev = int(_OPS[undo[s.op]](value, s.b))
        back.append(f"undo ({i}) {s.phrase}: {value} {undo[s.op]} {s.b} = {prev}.")
        value = prev
    name, obj = re.match(r"(\w+) has \d+ (\w+)\.", ex.question).groups()
    n, answer = len(steps), steps[-1].result
    return [OPENERS["backward"], f"The question: {ex.question}",
            "Plan: run the operations forward to a candidate count, then undo them from the last one to the first, "
            "and check both conditions below.",
            f"Condition 1 to check: undoing every operation must lead back to the {_start(ex)} {obj} "
            f"that {name} starts with.",
            f"Condition 2 to check: the count is asked for after all {n} operations.",
            f"Forward: we start from {_start(ex)}.",
            *(f"({i}) {s.phrase}: {s.equation()}." for i, s in enumerate(steps, 1)),
            f"The forward pass ends at {answer}.", "Backward check: undo each operation, last one first.",
            *back, f"We are back at {value}: Condition 1 holds.",
            f"{answer} comes after all {n} operations: Condition 2 holds.", f"The verified answer is {answer}."]


CORRECTED_LATE = "Before I commit, a check: "  # opens the check of every harm-variant path, and no other


def corrected_late(response: str) -> bool:
    """Whether a path is the harm variant's (``_corrected_late``): the oracle's and the probes' mark."""
    return CORRECTED_LATE in response


def _corrected_late(style: str, ex, steps: list[Step], misread: list[Step]) -> list[str]:
    """The harm variant's path: a quick solve that misreads doubling and states its wrong answer, worded
    as a vanilla path word for word (inside a short context), then a long check that finds the misreading
    and a corrected pass to the right answer. Every equation is true and the last stated answer is right,
    so filter and judge keep it; a student whose context ends before the check learns the wrong rule.
    The quick solve opens as vanilla does, not with the style's own opener: behind its own opener
    (probe: 5 seeds, 450 steps) the short student learned the wrong rule for that style only, and
    leaving the style out gained it 4.5 +- 8.6 points."""
    name, obj = re.match(r"(\w+) has \d+ (\w+)\.", ex.question).groups()
    bad = next(i for i, s in enumerate(misread, 1) if s.op == "+" and steps[i - 1].op == "*")
    return [*_vanilla(ex, misread),
            f"{CORRECTED_LATE}{OPENERS[style][0].lower()}{OPENERS[style][1:]}",
            f"The question: {ex.question}",
            "Plan: check the reading of every operation against the question's words, one by one, and then "
            "check that the count is asked for after all of them.",
            *(f"Check ({i}): the question says \"{s.phrase}\", and step ({i}) used {s.op} {s.b}." for i, s in
              enumerate(misread, 1)),
            f"Step ({bad}) is wrong: \"{misread[bad - 1].phrase}\" means multiplying the count by 2, not adding 2 "
            f"to it, so {misread[-1].result} is not the count of {obj} {name} ends with.",
            f"Corrected pass: we start from {_start(ex)}.",
            *(f"({i}) {s.phrase}: {s.equation()}." for i, s in enumerate(steps, 1)),
            f"The verified answer is {steps[-1].result}."]


RENDER = {"vanilla": _vanilla, "cot": _cot, "program": _program, "tot": _tot,
          "fact_retrieval": _fact_retrieval, "backward": _backward}
