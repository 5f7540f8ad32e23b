"""Shared behaviour of multiple-choice tasks: the answer is a choice label."""
from __future__ import annotations

from qr_ds.data.jsonl import RecordError
from qr_ds.tasks.base import Example, Task, pick_other, render_choices, require
from qr_ds.tasks.extract import parse_choice


def choice_pairs(raw: object) -> list[tuple[str, str]]:
    """(label, text) pairs from the hub layout {text: [...], label: [...]} or a release list of {text, label}."""
    if isinstance(raw, dict):  # hub: {"text": [...], "label": [...]}
        texts, labels = raw.get("text"), raw.get("label")
        if not isinstance(texts, list) or not isinstance(labels, list) or len(texts) != len(labels):
            raise RecordError("choices", "expected {'text': [...], 'label': [...]} of equal length")
        return [(str(lab), str(t)) for lab, t in zip(labels, texts)]
    if isinstance(raw, list):  # release: [{"text", "label"}]
        try:
            return [(str(c["label"]), str(c["text"])) for c in raw]
        except (KeyError, TypeError):
            raise RecordError("question.choices", "expected a list of {'text', 'label'} objects") from None
    raise RecordError("choices", f"expected a list or a dict, got {type(raw).__name__}")


class ChoiceTask(Task):
    answer_kind = "choice"

    def labelled_example(self, rec: dict, stem: str, choices: list[tuple[str, str]]) -> Example:
        """An example whose gold is the record's ``answerKey``, one of the ``choices`` labels."""
        gold = str(require(rec, "answerKey"))
        if gold not in dict(choices):
            raise RecordError("answerKey", f"{gold!r} is not one of the labels {[c[0] for c in choices]}")
        return Example(id=str(rec.get("id", "")), task=self.name, question=render_choices(stem, choices),
                       gold=gold, choices=choices)

    def parse_candidate(self, text: str, example: Example | None) -> str | None:
        return parse_choice(text, example.choices if example else None)

    def wrong_answer(self, example: Example, seed: int = 0) -> str:
        return pick_other([lab for lab, _ in example.choices or []], example.gold, seed)

    def answer_text(self, answer: str, example: Example) -> str:
        text = dict(example.choices or []).get(answer)
        return f"({answer}) {text}" if text else f"({answer})"
