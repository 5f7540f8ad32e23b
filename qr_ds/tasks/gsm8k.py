"""GSM8K: grade-school math word problems with a numeric answer."""
from __future__ import annotations

import re

from qr_ds.data.jsonl import RecordError
from qr_ds.tasks.base import Example, Task, register, require
from qr_ds.tasks.extract import canonical_number, numbers_equal, parse_number


class NumberTask(Task):
    answer_kind = "number"

    def parse_candidate(self, text: str, example: Example | None) -> str | None:
        return parse_number(text)

    def same(self, pred: str, gold: str) -> bool:
        return numbers_equal(pred, gold)

    def wrong_answer(self, example: Example, seed: int = 0) -> str:
        v = float(canonical_number(example.gold) or 0)
        return canonical_number(str(v + 1 + seed % 3 if v < 2 else v - 1 - seed % 3)) or "1"

    def code_literal(self, answer: str, example: Example) -> str:
        return answer


@register
class GSM8K(NumberTask):
    name = "gsm8k"
    description = "GSM8K: grade-school math word problems, numeric answer"
    instruction = "Let's think step by step. End with 'The answer is N.' where N is a number."
    hub = ("openai/gsm8k", "main", "test")

    def from_record(self, rec: dict) -> Example:
        question, answer = require(rec, "question"), str(require(rec, "answer"))
        m = re.search(r"####\s*(.+?)\s*$", answer)
        gold = canonical_number(m.group(1) if m else answer)
        if gold is None:
            raise RecordError("answer", f"no '#### N' final number in {answer[-60:]!r}")
        rationale = answer[: m.start()].strip() if m else ""
        return Example(id=str(rec.get("id", "")), task=self.name, question=str(question), gold=gold,
                       meta={"rationale": rationale} if rationale else {})
