"""JSONL reading that never drops a line silently, and append-only writing that survives kills."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

T = TypeVar("T")


class RecordError(ValueError):
    """A record that fails validation; ``field`` names the offending key."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"field '{field_name}': {message}")
        self.field = field_name


@dataclass
class LoadReport(Generic[T]):
    path: Path
    records: list[T] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)
    quarantine: Path | None = None

    def summary(self) -> str:
        s = f"{self.path}: accepted {len(self.records)}, rejected {len(self.rejected)}"
        if self.rejected:
            s += f" (quarantined to {self.quarantine})"
        return s


def quarantine_path(path: Path) -> Path:
    return path.with_name(path.name + ".quarantine.jsonl")


def load_jsonl(
    path: str | Path,
    parse: Callable[[dict], T],
    *,
    log: Callable[[str], None] | None = None,
    max_reasons: int = 5,
) -> LoadReport[T]:
    """Parse every non-blank line with ``parse``; bad lines go to ``<file>.quarantine.jsonl``.

    Each quarantined entry keeps the line number, the reason and the raw text, so nothing is lost.
    A summary (accepted / rejected, first reasons with file:line) goes to ``log`` (stderr by default).
    """
    path = Path(path)
    log = log or (lambda m: print(m, file=sys.stderr))
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    report: LoadReport[T] = LoadReport(path=path)
    bad_lines: list[dict] = []
    with path.open("r", encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            text = raw.strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                reason = f"not valid JSON ({e.msg} at column {e.colno})"
            else:
                if not isinstance(obj, dict):
                    reason = f"expected a JSON object, got {type(obj).__name__}"
                else:
                    try:
                        report.records.append(parse(obj))
                        continue
                    except (RecordError, ValueError, TypeError, KeyError) as e:
                        reason = str(e)
            report.rejected.append((lineno, reason))
            bad_lines.append({"line": lineno, "reason": reason, "raw": raw.rstrip("\n")})
    if bad_lines:
        report.quarantine = quarantine_path(path)
        with report.quarantine.open("w", encoding="utf-8") as q:
            for b in bad_lines:
                q.write(json.dumps(b, ensure_ascii=False) + "\n")
    log(report.summary())
    for lineno, reason in report.rejected[:max_reasons]:
        log(f"  {path}:{lineno}: {reason}")
    if len(report.rejected) > max_reasons:
        log(f"  ... and {len(report.rejected) - max_reasons} more in {report.quarantine}")
    return report


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    """Raw objects from a JSONL file whose validity the caller checks (or trusts: our own output)."""
    with Path(path).open("r", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


class JsonlAppender:
    """Append-only JSONL writer, flushed and fsync'ed per record: a kill loses nothing written."""

    def __init__(self, path: str | Path, fsync: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8")
        self._fsync = fsync

    def write(self, obj: Any) -> None:
        self._fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self._fh.flush()
        if self._fsync:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> int:
    """Write rows atomically (temp file then rename); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n
