"""BIG-bench Date Understanding: date arithmetic, rendered as lettered multiple choice.

Options of the release and hub formats are sorted by their text, so the same question gets the same
letters from either (the release lists the correct option first; keeping that order would leak it).
Records already lettered (``question``, ``choices: {text, label}``, ``answerKey``, as a model saw
them, e.g. next to its response) keep their letters.
"""
from __future__ import annotations

import re
import string

from qr_ds.data.jsonl import RecordError
from qr_ds.tasks.base import Example, register, render_choices, require
from qr_ds.tasks.choice import ChoiceTask, choice_pairs
from qr_ds.tasks.extract import parse_choice

_BBH_OPTION = re.compile(r"^\(([A-F])\)\s*(.+)$", re.MULTILINE)


def _date_key(text: str) -> str:
    """'2/8/2016' and '02/08/2016' compare equal."""
    m = re.fullmatch(r"\s*(\d{1,2})/(\d{1,2})/(\d{4})\s*", text)
    return f"{int(m.group(1)):02d}/{int(m.group(2)):02d}/{m.group(3)}" if m else text.strip()


def _scores(rec: dict) -> tuple[str, dict[str, float]]:
    if "target_scores" in rec:  # release (BIG-bench task.json)
        scores = rec["target_scores"]
        if not isinstance(scores, dict) or not scores:
            raise RecordError("target_scores", "expected a non-empty {option: score} object")
        # datasets' Arrow struct fills options of other rows with None: drop them
        return str(require(rec, "input")), {k: v for k, v in scores.items() if v is not None}
    if "multiple_choice_targets" in rec:  # hub: tasksource/bigbench
        opts, sc = rec["multiple_choice_targets"], require(rec, "multiple_choice_scores")
        if not isinstance(opts, list) or not isinstance(sc, list) or len(opts) != len(sc):
            raise RecordError("multiple_choice_scores", "expected one score per multiple_choice_targets entry")
        return str(require(rec, "inputs", "input")), dict(zip(opts, sc))
    raise RecordError("target_scores", f"missing (record has keys: {', '.join(sorted(rec))})")


@register
class DateUnderstanding(ChoiceTask):
    name = "date_understanding"
    description = "BIG-bench Date Understanding: date arithmetic, multiple choice (A)-(F)"
    instruction = "Let's think step by step. End with 'The answer is (X).' where X is the letter of the correct date."
    hub = ("tasksource/bigbench", "date_understanding", "validation")

    def from_record(self, rec: dict) -> Example:
        if "target" in rec and "target_scores" not in rec and _BBH_OPTION.search(str(rec.get("input", ""))):
            return self._from_bbh(rec)
        if "answerKey" in rec and "choices" in rec:  # lettered as a model saw them (ARC hub layout)
            return self.labelled_example(rec, str(require(rec, "question")).strip(), choice_pairs(rec["choices"]))
        stem, scores = _scores(rec)
        options = sorted(scores, key=_date_key)
        choices = [(string.ascii_uppercase[i], o) for i, o in enumerate(options)]
        golds = [lab for lab, o in choices if scores[o] == 1]
        if len(golds) != 1:
            raise RecordError("target_scores", f"expected exactly one option scored 1, got {len(golds)}")
        return Example(id=str(rec.get("id", rec.get("idx", ""))), task=self.name,
                       question=render_choices(stem.strip(), choices), gold=golds[0], choices=choices)

    def _from_bbh(self, rec: dict) -> Example:
        """BIG-Bench Hard layout: options already lettered inside ``input``, target "(B)"."""
        text = str(rec["input"])
        choices = [(m.group(1), m.group(2).strip()) for m in _BBH_OPTION.finditer(text)]
        stem = text[: text.find("Options:")] if "Options:" in text else text[: _BBH_OPTION.search(text).start()]
        gold = str(rec["target"]).strip("() ")
        if gold not in dict(choices):
            raise RecordError("target", f"{rec['target']!r} is not one of the options")
        return Example(id=str(rec.get("id", "")), task=self.name, question=render_choices(stem.strip(), choices),
                       gold=gold, choices=choices)

    def parse_candidate(self, text: str, example: Example | None) -> str | None:
        label = parse_choice(text, example.choices if example else None)
        if label is None and example and example.choices:  # a date written without leading zeros
            m = re.search(r"\d{1,2}/\d{1,2}/\d{4}", text)
            keys = {_date_key(t): lab for lab, t in example.choices}
            label = keys.get(_date_key(m.group(0))) if m else None
        return label
