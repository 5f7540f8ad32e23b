"""Shared behaviour of multiple-choice tasks: the answer is a choice label."""
from __future__ import annotations

from qr_ds.tasks.base import Example, Task, pick_other
from qr_ds.tasks.extract import parse_choice


class ChoiceTask(Task):
    answer_kind = "choice"

    def parse_candidate(self, text: str, example: Example | None) -> str | None:
        return parse_choice(text, example.choices if example else None)

    def wrong_answer(self, example: Example, seed: int = 0) -> str:
        return pick_other([lab for lab, _ in example.choices or []], example.gold, seed)

    def answer_text(self, answer: str, example: Example) -> str:
        text = dict(example.choices or []).get(answer)
        return f"({answer}) {text}" if text else f"({answer})"
