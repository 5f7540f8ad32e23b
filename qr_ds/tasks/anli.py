"""ANLI: adversarial natural language inference (entailment / neutral / contradiction)."""
from __future__ import annotations

from qr_ds.data.jsonl import RecordError
from qr_ds.tasks.base import Example, Task, pick_other, register, require
from qr_ds.tasks.extract import parse_nli

LABELS = ("entailment", "neutral", "contradiction")  # hub integer labels index this
_SHORT = {"e": "entailment", "n": "neutral", "c": "contradiction"}


def _label(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 3:
        return LABELS[value]
    if isinstance(value, str) and (v := value.strip().lower()) in LABELS + tuple(_SHORT):
        return _SHORT.get(v, v)
    raise RecordError("label", f"expected entailment/neutral/contradiction or 0/1/2, got {value!r}")


@register
class ANLI(Task):
    name = "anli"
    description = "ANLI round 3: does the premise entail, contradict, or neither the hypothesis"
    answer_kind = "nli_label"
    verdict_lines = True
    instruction = ("Let's think step by step. End with 'The answer is X.' where X is entailment, "
                   "neutral, or contradiction.")
    hub = ("facebook/anli", None, "test_r3")

    def from_record(self, rec: dict) -> Example:
        premise, hypothesis = require(rec, "premise"), require(rec, "hypothesis")
        question = (f"Premise: {premise}\nHypothesis: {hypothesis}\n"
                    "Does the premise entail the hypothesis, contradict it, or neither (neutral)?")
        reason = rec.get("reason")
        return Example(id=str(rec.get("uid", rec.get("id", ""))), task=self.name, question=question,
                       gold=_label(require(rec, "label")), meta={"reason": reason} if reason else {})

    def parse_candidate(self, text: str, example: Example | None) -> str | None:
        return parse_nli(text)

    def wrong_answer(self, example: Example, seed: int = 0) -> str:
        return pick_other(list(LABELS), example.gold, seed)
