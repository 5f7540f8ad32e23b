"""ARC-Challenge: grade-school science multiple choice (labels A-E, or 1-4 in some questions)."""
from __future__ import annotations

from qr_ds.tasks.base import Example, register, require
from qr_ds.tasks.choice import ChoiceTask, choice_pairs


@register
class ArcChallenge(ChoiceTask):
    name = "arc_challenge"
    description = "ARC-Challenge: grade-school science questions, multiple choice"
    instruction = "Let's think step by step. End with 'The answer is (X).' where X is the label of the correct choice."
    hub = ("allenai/ai2_arc", "ARC-Challenge", "test")

    def from_record(self, rec: dict) -> Example:
        q = require(rec, "question")
        if isinstance(q, dict):  # release format
            stem, choices = require(q, "stem"), choice_pairs(require(q, "choices"))
        else:
            stem, choices = q, choice_pairs(require(rec, "choices"))
        return self.labelled_example(rec, str(stem), choices)
