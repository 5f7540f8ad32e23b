"""The path pool: one JSONL record per teacher reasoning path, with a versioned schema.

Every stage reads and writes this format: ``generate`` fills prompt/response, ``filter`` fills
answer/correct/judge, ``embed`` fills embedding, and the trainer reads the result.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Callable, Iterable, Iterator, Literal

from qr_ds.data.jsonl import (LoadReport, RecordError, _decode, _parse_line, iter_lines, load_jsonl,
                              quarantine_path, require_file, write_jsonl)

SCHEMA = "qr_ds.path/1"
VERDICTS = ("VALID", "INVALID", "UNPARSEABLE")


@dataclass
class JudgeVerdict:
    verdict: Literal["VALID", "INVALID", "UNPARSEABLE"]
    reason: str = ""
    model: str = ""


@dataclass
class EmbeddingRef:
    """Row ``row`` of the float32 matrix ``file`` (a .npy, relative to the pool file's folder)."""

    file: str
    row: int
    text_hash: str = ""


@dataclass
class PathRecord:
    id: str  # unique per pool: question_id/style/sample[@teacher]
    task: str
    question_id: str
    question: str
    gold: str
    teacher: str
    style: str
    sample: int
    prompt: str
    response: str | None = None
    error: str | None = None  # why generation failed; response is None then
    sampling: dict[str, Any] = field(default_factory=dict)
    level: str | None = None  # difficulty where the task has levels (MATH "Level 3")
    answer: str | None = None  # extracted from response
    correct: bool | None = None
    judge: JudgeVerdict | None = None
    embedding: EmbeddingRef | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # a multi-task objective's task this path serves (data/baselines.py TRAIN_TASKS); None = question -> path
    train_task: str | None = None
    schema: str = SCHEMA

    @property
    def ok(self) -> bool:
        return self.response is not None and self.error is None

    def to_json(self) -> dict:
        # what dataclasses.asdict gives (tested), without its generic walk and deepcopy: 25 us a
        # record against 110 us on this project's 2-core CPU, paid by every stage that writes a pool
        out = {name: _plain(getattr(self, name)) for name in _FIELDS}
        for name in ("judge", "embedding"):
            if out[name] is not None:
                out[name] = dict(out[name].__dict__)
        return out

    @classmethod
    def from_json(cls, obj: dict) -> "PathRecord":
        return parse_record(obj)


_FIELDS = tuple(f.name for f in dataclasses.fields(PathRecord))
_ALLOWED = frozenset(_FIELDS)


def _plain(value: Any) -> Any:
    """A copy of the dicts, lists and tuples in ``value``, so a caller may change what to_json returns."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


_REQUIRED_STR = ("id", "task", "question_id", "question", "gold", "teacher", "style", "prompt")
_OPT_STR = ("response", "error", "level", "answer", "train_task")


def parse_record(obj: dict) -> PathRecord:
    """Validate one JSON object against the schema; raises RecordError naming the bad field."""
    schema = obj.get("schema", SCHEMA)
    if schema != SCHEMA:
        raise RecordError("schema", f"unsupported schema {schema!r}; this version reads {SCHEMA!r}")
    unknown = sorted(set(obj) - _ALLOWED)
    if unknown:
        raise RecordError(unknown[0], "unknown field (put extra data under 'meta')")
    for k in _REQUIRED_STR:
        if k not in obj:
            raise RecordError(k, "missing")
        if not isinstance(obj[k], str):
            raise RecordError(k, f"expected a string, got {type(obj[k]).__name__}")
    for k in ("id", "task", "question_id", "style", "teacher", "question", "prompt"):
        if not obj[k] or obj[k].isspace():  # an empty question would be trained on as if it asked something
            raise RecordError(k, "must not be empty")
    for k in _OPT_STR:
        if obj.get(k) is not None and not isinstance(obj[k], str):
            raise RecordError(k, f"expected a string or null, got {type(obj[k]).__name__}")
    sample = obj.get("sample")
    if not isinstance(sample, int) or isinstance(sample, bool) or sample < 0:
        raise RecordError("sample", f"expected an integer >= 0, got {sample!r}")
    if obj.get("response") is None and obj.get("error") is None:
        raise RecordError("response", "missing: a record needs a response or an error")
    correct = obj.get("correct")
    if correct is not None and not isinstance(correct, bool):
        raise RecordError("correct", f"expected true/false/null, got {correct!r}")
    for k in ("sampling", "meta"):
        if not isinstance(obj.get(k, {}), dict):
            raise RecordError(k, "expected an object")
    judge = obj.get("judge")
    if judge is not None:
        if not isinstance(judge, dict) or judge.get("verdict") not in VERDICTS:
            raise RecordError("judge", f"expected {{verdict: {'|'.join(VERDICTS)}, reason}}, got {judge!r}")
        judge = JudgeVerdict(verdict=judge["verdict"], reason=str(judge.get("reason", "")),
                             model=str(judge.get("model", "")))
    emb = obj.get("embedding")
    if emb is not None:
        emb = parse_embedding_ref(emb)
    kw = {k: obj[k] for k in _ALLOWED if k in obj}
    kw.update(judge=judge, embedding=emb, schema=SCHEMA)
    return PathRecord(**kw)


def parse_embedding_ref(emb: Any) -> EmbeddingRef:
    """``{file, row, text_hash}``: file relative to the pool's folder and inside it, row an int >= 0."""
    if not isinstance(emb, dict):
        raise RecordError("embedding", f"expected {{file, row, text_hash}}, got {emb!r}")
    unknown = sorted(set(emb) - {"file", "row", "text_hash"})
    if unknown:
        raise RecordError(f"embedding.{unknown[0]}", "unknown field")
    file, row, text_hash = emb.get("file"), emb.get("row"), emb.get("text_hash", "")
    if not isinstance(file, str) or not file:
        raise RecordError("embedding.file", f"expected a file name, got {file!r}")
    if not _inside_folder(file):
        raise RecordError("embedding.file", f"{file!r} must be relative to the pool's folder, without '..'")
    if not isinstance(row, int) or isinstance(row, bool) or row < 0:
        raise RecordError("embedding.row", f"expected an integer >= 0, got {row!r}")
    if not isinstance(text_hash, str):
        raise RecordError("embedding.text_hash", f"expected a string, got {text_hash!r}")
    return EmbeddingRef(file=file, row=row, text_hash=text_hash)


@functools.lru_cache(maxsize=64)  # a pool names one or a few matrices, a million times
def _inside_folder(file: str) -> bool:
    # A pool names its matrix beside itself: an absolute or '..' path would let a pool load any file.
    return not (PurePath(file).is_absolute() or ".." in PurePath(file).parts)


def record_lines(report: LoadReport[PathRecord]) -> dict[str, int]:
    """Record id -> its line in the pool file, so errors found after loading can name the line."""
    return dict(zip((r.id for r in report.records), report.lines))


def load_pool(path: str | Path, *, log: Callable[[str], None] | None = None) -> LoadReport[PathRecord]:
    """Load a pool file; malformed lines are quarantined next to it and counted, never dropped."""
    return load_jsonl(path, parse_record, log=log)


class PoolStream:
    """The records of a pool file one at a time, with their line numbers, for stages that must not hold
    the pool. Lines are refused exactly as ``load_pool`` refuses them, quarantined next to the file
    and summarised (to ``log``, stderr by default) once the iteration ends; ``accepted``,
    ``rejected`` and ``quarantine`` are complete from then on."""

    def __init__(self, path: str | Path, *, log: Callable[[str], None] | None = None, max_reasons: int = 5,
                 quarantine: bool = True):
        self.path = Path(path)
        self.write_quarantine = quarantine  # False: a check that must write nothing (a dry run)
        require_file(self.path)
        self.log = log or (lambda m: print(m, file=sys.stderr))
        self.max_reasons = max_reasons
        self.accepted = 0
        self.rejected: list[tuple[int, str]] = []  # (line number, reason)
        self.quarantine: Path | None = None

    def __iter__(self) -> Iterator[tuple[int, PathRecord]]:
        # one record at a time through load_jsonl's own line parser, so both refuse the same lines
        scratch: LoadReport[PathRecord] = LoadReport(path=self.path)
        bad_lines = []
        for lineno, raw in iter_lines(self.path):
            text, reason = _decode(raw)
            if reason is None:
                if not text.strip():
                    continue
                reason = _parse_line(text, parse_record, scratch, lineno)
            if reason is None:
                scratch.lines.pop()
                self.accepted += 1
                yield lineno, scratch.records.pop()
            else:
                self.rejected.append((lineno, reason))
                bad_lines.append({"line": lineno, "reason": reason, "raw": text})
        self._finish(bad_lines)

    def _finish(self, bad_lines: list[dict]) -> None:
        if bad_lines and self.write_quarantine:
            self.quarantine = quarantine_path(self.path)
            with self.quarantine.open("w", encoding="utf-8") as q:
                for b in bad_lines:
                    q.write(json.dumps(b, ensure_ascii=False) + "\n")
        summary = f"{self.path}: accepted {self.accepted}, rejected {len(self.rejected)}"
        self.log(summary + (f" (quarantined to {self.quarantine})" if self.quarantine else ""))
        for lineno, reason in self.rejected[: self.max_reasons]:
            self.log(f"  {self.path}:{lineno}: {reason}")
        if len(self.rejected) > self.max_reasons:
            self.log(f"  ... and {len(self.rejected) - self.max_reasons} more" + (f" in {self.quarantine}" if self.quarantine else ""))


def iter_pool(path: str | Path, *, log: Callable[[str], None] | None = None) -> Iterator[PathRecord]:
    """The records of a pool file, streamed (see ``PoolStream`` for line numbers and counts)."""
    for _, rec in PoolStream(path, log=log):
        yield rec


def write_pool(path: str | Path, records: Iterable[PathRecord]) -> int:
    return write_jsonl(path, (r.to_json() for r in records))


def normalise_question(text: str) -> str:
    """Lowercase, whitespace collapsed: the same question in two files compares equal."""
    return " ".join(text.lower().split())


def pool_questions(pool: Path) -> set[str]:
    """Normalised questions of a pool JSONL; malformed lines are the trainer's to report."""
    out = set()
    with pool.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                q = json.loads(line).get("question")
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(q, str):
                out.add(normalise_question(q))
    return out
