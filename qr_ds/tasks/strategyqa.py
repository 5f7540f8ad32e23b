"""StrategyQA: yes/no questions that need implicit multi-hop reasoning."""
from __future__ import annotations

from qr_ds.data.jsonl import RecordError
from qr_ds.tasks.base import Example, Task, register, require
from qr_ds.tasks.extract import parse_yes_no


def _yes_no(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and value in (0, 1):
        return "yes" if value else "no"
    if isinstance(value, str) and (v := parse_yes_no(value)) is not None and len(value.split()) == 1:
        return v
    raise RecordError("answer", f"expected a bool or yes/no, got {value!r}")


@register
class StrategyQA(Task):
    name = "strategyqa"
    description = "StrategyQA: yes/no questions needing implicit multi-step strategies"
    answer_kind = "yes_no"
    verdict_lines = True
    instruction = "Let's think step by step. End with 'The answer is yes.' or 'The answer is no.'"
    hub = ("ChilleD/StrategyQA", None, "test")

    def from_record(self, rec: dict) -> Example:
        question = require(rec, "question")
        facts = rec.get("facts")
        return Example(
            id=str(rec.get("qid", rec.get("id", ""))), task=self.name, question=str(question),
            gold=_yes_no(require(rec, "answer", "label")),
            meta={k: rec[k] for k in ("term", "description", "decomposition") if k in rec}
            | ({"facts": facts} if facts else {}),
        )

    def parse_candidate(self, text: str, example: Example | None) -> str | None:
        return parse_yes_no(text)

    def same(self, pred: str, gold: str) -> bool:
        return pred.strip().lower() == gold.strip().lower()

    def wrong_answer(self, example: Example, seed: int = 0) -> str:
        return "no" if example.gold == "yes" else "yes"
