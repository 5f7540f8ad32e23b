"""What every pipeline stage (generate, filter, embed) shares: a failure that must never look like
success, per-request seeds that a re-run repeats, and one run per output.

One run per output: ``<out>.lock`` held with flock while a stage writes ``out``. Two ``generate``
runs on one output would ask the teacher for the same paths twice and interleave their logs. The
kernel releases a flock when its holder dies, so a lock left by a killed run is free to take; the
file's pid then only names who left it, in a note.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from qr_ds.config import ConfigError, apply_override, from_dict, load_yaml


class StageFailed(RuntimeError):
    """A stage run that must not look like success; the message is what the user is told."""


def derive_seed(base: int, *parts: object) -> int:
    """A stable 31-bit seed from a base seed and a key (Python's hash() changes per process)."""
    h = hashlib.sha256("|".join(map(str, (base, *parts))).encode()).digest()
    return int.from_bytes(h[:4], "big") & 0x7FFFFFFF


def load_stage_config(cls, path: Path, stage: str, overrides: list[tuple[str, object]] = ()):
    """A stage's config from its own YAML, or from the ``<stage>:`` section of a pipeline YAML."""
    data = load_yaml(path)
    if isinstance(data.get(stage), dict):
        data = data[stage]
    for dotted, value in overrides:
        apply_override(data, dotted, value)
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


class LockHeld(StageFailed):
    """Another live run holds the output's lock."""


def lock_path(out: Path) -> Path:
    return out.with_name(out.name + ".lock")


def _pid_in(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 64).decode(errors="replace").strip()


def _acquire(path: Path) -> int:
    """An fd holding the flock on the file now at ``path`` (a holder may unlink it as we wait)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _pid_in(fd) or "unknown"
            os.close(fd)
            raise LockHeld(f"another run (pid {holder}) is writing this output: {path} is held. "
                           f"Wait for it to finish; two runs on one output would ask for the same paths twice.") from None
        try:
            same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            return fd
        os.close(fd)  # the previous holder removed the file after we opened it: lock the new one


@contextmanager
def output_lock(out: Path, log=lambda m: print(m, file=sys.stderr)) -> Iterator[None]:
    """Hold ``<out>.lock`` for the block; refuse (LockHeld) when a live run holds it."""
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path)
    left_by = _pid_in(fd)
    if left_by:
        log(f"note: took over {path}, left by pid {left_by}, which no longer holds it (killed or crashed)")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # unlink before unlocking, so a waiter re-checks the inode
        os.close(fd)
