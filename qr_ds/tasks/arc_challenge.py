"""ARC-Challenge: grade-school science multiple choice (labels A-E, or 1-4 in some questions)."""
from __future__ import annotations

from qr_ds.data.jsonl import RecordError
from qr_ds.tasks.base import Example, register, render_choices, require
from qr_ds.tasks.choice import ChoiceTask


def _choices(raw: object) -> list[tuple[str, str]]:
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


@register
class ArcChallenge(ChoiceTask):
    name = "arc_challenge"
    description = "ARC-Challenge: grade-school science questions, multiple choice"
    instruction = "Let's think step by step. End with 'The answer is (X).' where X is the label of the correct choice."
    hub = ("allenai/ai2_arc", "ARC-Challenge", "test")

    def from_record(self, rec: dict) -> Example:
        q = require(rec, "question")
        if isinstance(q, dict):  # release format
            stem, choices = require(q, "stem"), _choices(require(q, "choices"))
        else:
            stem, choices = q, _choices(require(rec, "choices"))
        gold = str(require(rec, "answerKey"))
        if gold not in dict(choices):
            raise RecordError("answerKey", f"{gold!r} is not one of the labels {[c[0] for c in choices]}")
        return Example(id=str(rec.get("id", "")), task=self.name, question=render_choices(str(stem), choices),
                       gold=gold, choices=choices)
