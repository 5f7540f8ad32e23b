"""JSONL reading that never drops a line silently, and append-only writing that survives kills."""
from __future__ import annotations

import codecs
import hashlib
import json
import os
import tempfile
import sys
from contextlib import contextmanager
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
    lines: list[int] = field(default_factory=list)  # line number of each record, for later errors
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)
    quarantine: Path | None = None

    def summary(self) -> str:
        s = f"{self.path}: accepted {len(self.records)}, rejected {len(self.rejected)}"
        if self.rejected:
            s += f" (quarantined to {self.quarantine})"
        return s


def hash_file(path: str | Path, h=None):
    """``h`` (a new sha256 when None) updated with the file's bytes, read in 8 MiB chunks."""
    h = h or hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 23):
            h.update(chunk)
    return h


def file_sha256(path: str | Path) -> str:
    return hash_file(path).hexdigest()


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
    require_file(path)
    report: LoadReport[T] = LoadReport(path=path)
    bad_lines: list[dict] = []
    for lineno, raw in iter_lines(path):
        text, reason = _decode(raw)
        if reason is None:
            if not text.strip():
                continue
            reason = _parse_line(text, parse, report, lineno)
        if reason is not None:
            report.rejected.append((lineno, reason))
            bad_lines.append({"line": lineno, "reason": reason, "raw": text})
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


def require_file(path: Path) -> None:
    """A file to read, refused naming it when it is missing or a folder (both exit 2 at the command
    line; a folder said it was missing)."""
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) split on "\n" only (a trailing "\r" dropped): JSON strings may hold raw
    U+2028 or other separators that ``str.splitlines`` would cut, and bytes let one undecodable
    line be reported instead of aborting the file."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)  # an editor's byte-order mark, not content
            yield lineno, raw.rstrip(b"\n").removesuffix(b"\r")


def _decode(raw: bytes) -> tuple[str, str | None]:
    """The line's text, and why it is refused if it is not UTF-8 (then shown with \\x escapes)."""
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        reason = f"not UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line)"
        return raw.decode("utf-8", errors="backslashreplace"), reason


def _parse_line(text: str, parse: Callable[[dict], T], report: LoadReport[T], lineno: int) -> str | None:
    """Append the parsed record (and its line) to ``report``; or return why the line is refused."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return f"not valid JSON ({e.msg} at column {e.colno})"
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    try:
        record = parse(obj)
    except (RecordError, ValueError, TypeError, KeyError) as e:
        return str(e)
    report.records.append(record)
    report.lines.append(lineno)
    return None


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    """Raw objects from a JSONL file whose validity the caller checks (or trusts: our own output); a
    line that is not JSON (a half-written last line a kill left) is refused naming file:line."""
    with Path(path).open("r", encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            yield obj


@contextmanager
def naming_path(path: Path) -> Iterator[None]:
    """Attach ``path`` to an OSError that has no file name (ENOSPC from write/flush/fsync has none),
    so the command line can say which file the disk was full for."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def repair_tail(path: Path, block: int = 1 << 16) -> None:
    """Drop a half-written last line (a kill mid-write) so appends start on a fresh line. Logs reach
    GBs: reads the last byte, and after a kill only back to the last newline."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as fh:
        end = fh.seek(0, 2)
        fh.seek(end - 1)
        if fh.read(1) == b"\n":
            return
        cut = end
        while cut > 0:
            start = max(0, cut - block)
            fh.seek(start)
            nl = fh.read(cut - start).rfind(b"\n")
            if nl >= 0:
                cut = start + nl + 1
                break
            cut = start
        fh.truncate(cut)
        fh.flush()
        os.fsync(fh.fileno())


class JsonlAppender:
    """Append-only JSONL writer, flushed and fsync'ed per record: a kill loses nothing written."""

    def __init__(self, path: str | Path, fsync: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8")
        self._fsync = fsync

    def write(self, obj: Any) -> None:
        with naming_path(self.path):
            self._fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
            self._fh.flush()
            if self._fsync:
                os.fsync(self._fh.fileno())

    def close(self) -> None:
        with naming_path(self.path):
            self._fh.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> int:
    """Write rows atomically (temp file then rename); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique temp name: two writers of the same file must not rename each other's half-written temp.
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    tmp, n = Path(name), 0
    try:
        with naming_path(tmp), os.fdopen(fd, "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return n
