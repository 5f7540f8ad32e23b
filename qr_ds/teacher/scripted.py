"""ScriptedTeacher: a scripted, offline STAND-IN for a real black-box teacher (and judge).

No proprietary teacher can be reached here, so tests and CPU demos use this one. It writes
short paths for the ``synthetic`` task (from its ``solve_steps``), in every style,
deterministic per (seed, question, style, sample). Some paths are made wrong on purpose (wrong
final answer) and some get a planted spurious step with the right answer, so both filter
steps have work. As a judge it flags exactly the spurious steps it plants.

Style quality differs by question level, on purpose, so a router has something to learn:
``WRONG_FACTOR[style][level-1]`` scales ``wrong_rate``: vanilla is fine on level 1 and poor on
level 3, program is the reverse, backward verifies and errs least overall; ``SPURIOUS_FACTOR``
scales ``spurious_rate`` (fact_retrieval recalls "facts" and hallucinates most).
"""
from __future__ import annotations

import json
import random
import re
from typing import Iterable

from qr_ds.tasks import solve_steps, step_phrases
from qr_ds.teacher.base import Completion, OnDone, Request
from qr_ds.teacher.config import TeacherConfig

MODEL_NAME = "scripted-teacher"

WRONG_FACTOR: dict[str, tuple[float, float, float]] = {
    "vanilla": (0.4, 1.2, 2.4),
    "cot": (0.6, 0.9, 1.4),
    "tot": (0.8, 0.9, 1.1),
    "program": (1.4, 0.8, 0.3),
    "fact_retrieval": (1.0, 1.1, 1.3),
    "backward": (0.5, 0.6, 0.8),
}
SPURIOUS_FACTOR: dict[str, float] = {
    "vanilla": 0.5, "cot": 1.0, "tot": 1.0, "program": 0.5, "fact_retrieval": 2.0, "backward": 1.0,
}
# Planted steps: plausible-sounding claims that the computation never uses. The judge finds them
# by these exact phrasings, so a real path never trips it by accident.
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


def level_index(level: str | None) -> int:
    """0, 1, 2 for levels 1, 2, 3 (the digit in "Level 3" or "3"); level 2 when unknown."""
    m = re.search(r"\d+", level or "")
    return min(max(int(m.group()) - 1, 0), 2) if m else 1


def spurious_step(text: str) -> int | None:
    """1-based index of the first line holding a planted spurious step, or None."""
    for i, line in enumerate(text.splitlines(), start=1):
        if any(r.search(line) for r in _SPURIOUS_RE):
            return i
    return None


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

    def plan(self, req: Request) -> tuple[bool, bool]:
        """(wrong final answer?, planted spurious step?) for this path; deterministic."""
        ex, style = req.context["example"], req.context["style"]
        rng = random.Random(f"{self.cfg.sampling.seed}|{req.key}")
        wrong_p = min(0.95, self.cfg.scripted.wrong_rate * WRONG_FACTOR.get(style, (1, 1, 1))[level_index(ex.level)])
        spur_p = min(0.95, self.cfg.scripted.spurious_rate * SPURIOUS_FACTOR.get(style, 1.0))
        wrong = rng.random() < wrong_p
        spurious = not wrong and rng.random() < spur_p
        return wrong, spurious

    def path(self, req: Request) -> str:
        task, ex, style = req.context["task"], req.context["example"], req.context["style"]
        wrong, spurious = self.plan(req)
        rng = random.Random(f"{self.cfg.sampling.seed}|{req.key}|text")
        steps = solve_steps(ex) if task.name == "synthetic" else []
        phrases = step_phrases(ex) if steps else []
        answer = task.wrong_answer(ex, seed=rng.randint(0, 10**6)) if wrong else ex.gold
        if wrong and steps:  # the slip happens in the last operation, as real wrong paths do
            steps[-1] = (steps[-1][0], int(answer))
        lines = [OPENERS.get(style, "Let me solve this.")]
        for i, ((op, value), phrase) in enumerate(zip(steps, phrases), start=1):
            lines.append(_step_line(style, i, phrase, op, value))
        if spurious:
            at = rng.randint(1, len(lines))
            value = steps[min(at, len(steps)) - 1][1] if steps else rng.randint(2, 99)
            lines.insert(at, rng.choice(SPURIOUS).format(v=value))
        lines.append(task.render_final(ex, style, answer))
        return "\n".join(lines)

    def judge(self, req: Request) -> str:
        rec = req.context["judge_record"]
        rng = random.Random(f"{self.cfg.sampling.seed}|judge|{rec.id}|{req.seed}")
        if rng.random() < self.cfg.scripted.unparseable_rate:
            return rng.choice(["I would need to look at this more carefully.", "Hmm. Let me think about the steps."])
        bad = spurious_step(rec.response or "")
        reason = f"step {bad} asserts a fact that is false and unused" if bad else "every step follows from the previous ones"
        verdict = "INVALID" if bad else "VALID"
        forms = [
            lambda: json.dumps({"verdict": verdict, "reason": reason}),
            lambda: f"Verdict: {verdict}\nReason: {reason}",
            lambda: f"**Verdict:** {verdict}\n\n{reason[0].upper() + reason[1:]}.",
            lambda: f"{verdict} - {reason}",
            lambda: f"I checked each step. The reasoning is {'valid' if not bad else 'invalid'}: {reason}.",
        ]
        return rng.choice(forms)()


def _step_line(style: str, i: int, phrase: str, op: str, value: int) -> str:
    # Each step names the words it acts on: a tiny student then finds the next operation by
    # copying what follows the last one (in a plain training loop: 65% accuracy vs 55% without).
    if style == "program":
        return f"x{i} = {op}  # {phrase}: {value}"
    if style in ("cot", "backward"):
        return f"({i}) {phrase}: {op} = {value}."
    return f"{phrase}: {op} = {value}."
