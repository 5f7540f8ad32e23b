"""MATH (Hendrycks et al.): competition mathematics with LaTeX answers in \\boxed{}."""
from __future__ import annotations

from qr_ds.data.jsonl import RecordError
from qr_ds.tasks.base import Example, Task, register, require
from qr_ds.tasks.equiv import math_equiv
from qr_ds.tasks.extract import canonical_number, last_boxed, parse_latex_answer


@register
class MATH(Task):
    name = "math"
    description = "MATH: competition mathematics, LaTeX answer in \\boxed{}"
    answer_kind = "latex"
    instruction = "Let's think step by step. Put the final answer in \\boxed{}."
    hub = ("HuggingFaceH4/MATH-500", None, "test")

    def from_record(self, rec: dict) -> Example:
        problem = require(rec, "problem")
        gold = rec.get("answer")  # MATH-500 and similar hub copies give it directly
        if gold is None:
            solution = str(require(rec, "solution"))
            gold = last_boxed(solution)
            if gold is None:
                raise RecordError("solution", "no \\boxed{} answer in the solution")
        level = rec.get("level")
        if isinstance(level, int):
            level = f"Level {level}"
        subject = rec.get("type", rec.get("subject"))
        return Example(id=str(rec.get("id", rec.get("unique_id", ""))), task=self.name, question=str(problem),
                       gold=str(gold).strip(), level=level, meta={"subject": subject} if subject else {})

    def parse_candidate(self, text: str, example: Example | None) -> str | None:
        return parse_latex_answer(text)

    def same(self, pred: str, gold: str) -> bool:
        return math_equiv(pred, gold)

    def wrong_answer(self, example: Example, seed: int = 0) -> str:
        value = canonical_number(example.gold.replace("\\!", ""))  # "1,\\!000" is a number
        if value is not None:
            return canonical_number(str(float(value) + 1 + seed)) or value
        return f"{example.gold}+{1 + seed}"

    def answer_text(self, answer: str, example: Example) -> str:
        return f"$\\boxed{{{answer}}}$"

    def code_literal(self, answer: str, example: Example) -> str:
        return f'r"{answer}"' if '"' not in answer else repr(answer)
