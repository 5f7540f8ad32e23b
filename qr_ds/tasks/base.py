"""Task interface: read a benchmark's records, extract a model's final answer, judge it, and
render the final part of a teacher path in each reasoning style.

Every task accepts both its public release format and its Hugging Face hub format, so a file
downloaded either way loads. Extraction never guesses: no stated answer means ``None``.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar

from qr_ds.data.jsonl import RecordError, iter_lines
from qr_ds.tasks import extract as ex

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")  # what Task.load reads as a data file, present or not


def is_file_source(source: str | Path) -> bool:
    """The rule Task.load uses: a data file by its suffix or presence, else a hub dataset name."""
    return Path(source).suffix in FILE_SUFFIXES or Path(source).exists()


@dataclass
class Example:
    id: str
    task: str
    question: str  # with the choices rendered, exactly what the model sees
    gold: str  # canonical answer (letter, number, yes/no, label, LaTeX)
    choices: list[tuple[str, str]] | None = None  # (label, text)
    level: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.id:  # releases without ids (GSM8K): a stable id from the content
            self.id = f"{self.task}-{hashlib.sha1(self.question.encode()).hexdigest()[:12]}"


def require(rec: dict, *keys: str) -> Any:
    """The first present key's value; RecordError naming the keys when none is there."""
    for k in keys:
        if k in rec and rec[k] is not None:
            return rec[k]
    raise RecordError(" / ".join(keys), f"missing (record has keys: {', '.join(sorted(rec)) or 'none'})")


def render_choices(stem: str, choices: list[tuple[str, str]]) -> str:
    opts = " ".join(f"({label}) {text}" for label, text in choices)
    return f"{stem}\nAnswer Choices: {opts}"


class Task:
    """Base class; subclasses set the class attributes and implement ``from_record``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    answer_kind: ClassVar[str] = ""  # "choice", "number", "yes_no", "nli_label", "latex"
    instruction: ClassVar[str] = ""
    hub: ClassVar[tuple[str, str | None, str]] = ("", None, "test")  # (dataset, config, split)
    verdict_lines: ClassVar[bool] = False  # word answers: a line "Therefore, No." states the answer

    # ---- records ---------------------------------------------------------------------------
    def from_record(self, rec: dict) -> Example:
        raise NotImplementedError

    def normalized(self, rec: dict) -> Example | None:
        """An Example from already-normalized fields (id/question/gold), as ``score`` accepts."""
        if {"question", "gold"} <= rec.keys() and isinstance(rec["question"], str):
            choices = rec.get("choices")
            if choices is not None and not (
                isinstance(choices, list) and all(isinstance(c, (list, tuple)) and len(c) == 2 for c in choices)
            ):
                raise RecordError("choices", "expected a list of [label, text] pairs")
            return Example(
                id=str(rec.get("id", "")), task=self.name, question=rec["question"], gold=str(rec["gold"]),
                choices=[tuple(c) for c in choices] if choices else None, level=rec.get("level"),
            )
        return None

    def load(self, source: str, split: str | None = None, config: str | None = None,
             limit: int | None = None) -> LoadedExamples:
        """Examples from a local .jsonl/.json/.parquet file or a hub dataset, with their provenance.

        source: a file path, or a hub dataset name (``name`` or ``name:config``).
        split: hub: the split to load (default: the task's evaluation split ``hub[2]``). A file has no
            splits to choose from: ``split`` records what the caller says it holds; by default the
            ``source_split`` its records carry (``qr-ds data export`` writes it), else None (unknown).
        config: hub: the configuration (default: ``name:config``, else the task's own for its dataset).
        limit: only the first ``limit`` records.
        The result records ``source``, ``split`` and ``config`` as loaded, so that a caller can refuse
        a test split (``is_test_split``).
        """
        path = Path(source)
        if path.suffix in (".jsonl", ".json") and path.exists():
            rows = _read_json_rows(path, limit)
        elif path.suffix == ".parquet" and path.exists():
            rows = numbered(datasets_rows(lambda d: d.load_dataset("parquet", data_files=str(path), split="train"),
                                          limit))
        elif path.exists():
            raise ValueError(f"{source}: unsupported file type {path.suffix!r} (use .jsonl, .json or .parquet)")
        elif path.suffix in FILE_SUFFIXES:
            raise FileNotFoundError(f"no such file: {source}")
        else:
            name, config, split = self.hub_source(source, split, config)
            rows = numbered(hub_rows(self, name, config, split, limit))
        if path.exists() and split is None:  # a file: the split its records say they came from
            split = _recorded_split(rows)
        out = []
        for where, rec in rows:
            try:
                example = self.from_record(rec)
                if not example.question.strip():  # a path for no question teaches nothing and passes every check
                    raise ValueError("the question is empty")
                out.append(example)
            except (RecordError, ValueError, TypeError, KeyError) as e:
                raise ValueError(f"{source}:{where}: {self.name} record: {e}") from e
        return LoadedExamples(out, source=source, split=split, config=config)

    def hub_source(self, source: str, split: str | None, config: str | None) -> tuple[str, str | None, str]:
        """(dataset, config, split) that ``source`` (``name[:config]``) and the arguments ask for."""
        name, _, named_config = source.partition(":")
        if config and named_config and config != named_config:
            raise ValueError(f"{source}: config {named_config!r} in the name but {config!r} asked for")
        config = config or named_config or (self.hub[1] if name == self.hub[0] else None)
        return name, config, split or self.hub[2]

    # ---- answers ---------------------------------------------------------------------------
    def parse_candidate(self, text: str, example: Example | None) -> str | None:
        """The canonical answer stated in a short candidate span, or None."""
        raise NotImplementedError

    def extract(self, text: str, example: Example | None = None, partial: bool = False) -> str | None:
        """The final stated answer in a model output, canonical; None when none is stated.

        ``partial``: ``text`` is the start of an output cut at a context length (with the character
        after the cut when that is a space or line break). Only its whole lines and sentences are read
        (``extract.whole_part``), and it is no whole output that could be a bare answer."""
        if partial:
            text = ex.whole_part(text)
        if not text or not text.strip():
            return None
        for cand in reversed(ex.candidates(text, verdicts=self.verdict_lines)):
            ans = self.parse_candidate(cand, example)
            if ans is not None:
                return ans
        bare = None if partial else ex.bare_answer(text)
        return self.parse_candidate(bare, example) if bare is not None else None

    def same(self, pred: str, gold: str) -> bool:
        return pred.strip() == gold.strip()

    def is_correct(self, pred: str | None, example: Example) -> bool:
        return pred is not None and self.same(pred, example.gold)

    def wrong_answer(self, example: Example, seed: int = 0) -> str:
        """A plausible answer that is not the gold (for deliberately wrong teacher paths)."""
        raise NotImplementedError

    # ---- teacher-style endings -------------------------------------------------------------
    def answer_text(self, answer: str, example: Example) -> str:
        """How a path states ``answer`` in prose ("(B)", "\\boxed{...}", "42")."""
        return answer

    def code_literal(self, answer: str, example: Example) -> str:
        """A Python expression a program would print to show ``answer``."""
        return repr(answer)

    def render_final(self, example: Example, style: str, answer: str | None = None) -> str:
        """A realistic last part of a teacher response in ``style`` ending with ``answer`` (gold by default)."""
        answer = example.gold if answer is None else answer
        if style not in RENDERERS:
            raise ValueError(f"unknown style {style!r}; known: {', '.join(RENDERERS)}")
        return RENDERERS[style](self, example, answer)


def _read_json_rows(path: Path, limit: int | None) -> list[tuple[int, dict]]:
    """(line number, object) pairs; a malformed line raises naming file:line."""
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
        data = data.get("examples", data.get("data", data)) if isinstance(data, dict) else data
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a list of records (or an 'examples' list)")
        rows = list(enumerate(data, start=1))
    else:
        rows = []
        for lineno, raw in iter_lines(path):  # "\n" only: a JSON string may hold a raw U+2028
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1})") from None
            if not line.strip():
                continue
            try:
                rows.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from e
    for where, rec in rows:
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{where}: expected a JSON object, got {type(rec).__name__}")
    return rows[:limit] if limit is not None else rows


class LoadedExamples(list):
    """A list of examples that remembers what was loaded: ``source``, ``split``, ``config``."""

    def __init__(self, examples: list[Example], source: str, split: str | None, config: str | None):
        super().__init__(examples)
        self.source, self.split, self.config = source, split, config


def is_test_split(task: str | Task, split: str | None) -> bool:
    """True for a split a task is evaluated on: its hub evaluation split (ANLI "test_r3", BIG-bench
    date "validation") or any split named test ("test", "test_r1"). None (unknown) is not one."""
    task = get_task(task) if isinstance(task, str) else task
    return split is not None and (split == task.hub[2] or re.search(r"(?:^|[_\-.])test", split.lower()) is not None)


SPLIT_FIELD = "source_split"  # the hub split an exported record came from


def _recorded_split(rows: list[tuple[int, dict]]) -> str | None:
    splits = {rec.get(SPLIT_FIELD) for _, rec in rows}
    return splits.pop() if len(splits) == 1 else None


def numbered(rows: list[dict]) -> list[tuple[int, dict]]:
    return [(i + 1, r) for i, r in enumerate(rows)]


class HubUnavailable(ValueError):
    """A hub dataset could not be downloaded; the message says what to fetch, from where, and how."""


def hub_help(task: Task, dataset: str, config: str | None, split: str, reason: str, out: str | None = None,
             export_args: str | None = None) -> str:
    """One line: what to download, from where, and the commands that do it, through `qr-ds data export`
    with the flags that name this source (``export_args``; a part's cut or the split's own), since only
    that command checks every record and writes the split the records came from."""
    out = out or f"{task.name}_{split}.jsonl"
    raw = f"{task.name}_{split}_hub.jsonl"
    configured = f", config {config!r}" if config else ""
    load_args = f"{dataset!r}, {config!r}" if config else repr(dataset)
    other = [f"--dataset {dataset}"] + ([f"--config {config}"] if config else []) if dataset != task.hub[0] else []
    args = export_args or " ".join([f"--split {split}"] + other)
    return (f"cannot download {dataset}{configured}, split {split!r} from the Hugging Face hub ({reason}). "
            f"Dataset page: https://huggingface.co/datasets/{dataset} . On a machine with internet run "
            f"`qr-ds data export {task.name} {args} --out {out}` and copy {out} here; or there save the split "
            f"with `python -c \"import datasets; datasets.load_dataset({load_args}, split={split!r}).to_json("
            f"{raw!r})\"`, copy {raw} here and run `qr-ds data export {task.name} {args} --from-file {raw} "
            f"--out {out}`. Then give {out} as the data.")


def hub_rows(task: Task, dataset: str, config: str | None, split: str, limit: int | None,
             out: str | None = None, export_args: str | None = None) -> list[dict]:
    """Records of a hub split via ``datasets``; HubUnavailable saying how to get them when that fails."""
    try:
        return datasets_rows(lambda d: d.load_dataset(dataset, config, split=split), limit)
    except ValueError as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        reason = "HF_HUB_OFFLINE=1 and no cached copy" if offline else str(e)
        raise HubUnavailable(hub_help(task, dataset, config, split, reason, out, export_args)) from e


def datasets_rows(open_ds: Callable[[Any], Any], limit: int | None) -> list[dict]:
    import datasets  # heavy: only when a parquet file or hub name is asked for

    try:
        ds = open_ds(datasets)
    except Exception as e:  # offline / unknown name: say so plainly
        raise ValueError(f"could not load dataset: {type(e).__name__}: {e}") from e
    n = len(ds) if limit is None else min(limit, len(ds))
    return [ds[i] for i in range(n)]


# ---- style renderers: each ends with the answer stated the way such paths usually do ----------

def _vanilla(t: Task, e: Example, a: str) -> str:
    return f"Putting the given information together, the result follows directly.\nTherefore, the answer is {t.answer_text(a, e)}."


def _cot(t: Task, e: Example, a: str) -> str:
    return (
        "Step 1: Identify what the question asks for.\n"
        "Step 2: Work through the relevant details one at a time.\n"
        f"Step 3: Combine the intermediate results, which gives {t.answer_text(a, e)}.\n"
        f"So the answer is {t.answer_text(a, e)}."
    )


def _tot(t: Task, e: Example, a: str) -> str:
    other = t.wrong_answer(replace(e, gold=a), seed=1)
    return (
        f"Path 1: Reason directly from the main facts; this leads to {t.answer_text(a, e)}.\n"
        f"Path 2: Try a shortcut; it suggests {t.answer_text(other, e)}, but it skips a necessary step.\n"
        "Path 3: Check edge cases; they agree with Path 1.\n"
        f"Path 1 is the most promising and consistent.\n**Final answer:** {t.answer_text(a, e)}"
    )


def _program(t: Task, e: Example, a: str) -> str:
    return (
        "```python\ndef solve():\n    # encode the reasoning above\n"
        f"    result = {t.code_literal(a, e)}\n    return result\n\nprint(solve())\n```\n"
        f"Output: {a}"
    )


def _fact_retrieval(t: Task, e: Example, a: str) -> str:
    return (
        "Relevant facts:\n1. The question's key terms have their standard meanings.\n"
        "2. The quantities and relations stated in the question hold.\n"
        f"Reasoning: Applying these facts to the question yields {t.answer_text(a, e)}.\n"
        f"The answer is {t.answer_text(a, e)}."
    )


def _backward(t: Task, e: Example, a: str) -> str:
    return (
        f"Forward reasoning: Working from the question, a candidate answer is {t.answer_text(a, e)}.\n"
        f"Backward verification: Assume the answer is {t.answer_text(a, e)} and check it against every "
        "condition in the question; each condition is satisfied, and no other option fits.\n"
        f"The verified answer is {t.answer_text(a, e)}."
    )


RENDERERS: dict[str, Callable[[Task, Example, str], str]] = {
    "vanilla": _vanilla, "cot": _cot, "tot": _tot, "program": _program,
    "fact_retrieval": _fact_retrieval, "backward": _backward,
}

# ---- registry ---------------------------------------------------------------------------------
_REGISTRY: dict[str, Task] = {}


def register(cls: type[Task]) -> type[Task]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls()
    return cls


def get_task(name: str) -> Task:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(_REGISTRY))}") from None


def list_tasks() -> list[Task]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def pick_other(options: list[str], gold: str, seed: int) -> str:
    """A deterministic option other than ``gold``."""
    rest = [o for o in options if o != gold]
    return rest[random.Random(f"{gold}|{seed}").randrange(len(rest))]
