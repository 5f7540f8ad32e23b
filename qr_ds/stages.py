"""What every pipeline stage (generate, filter, embed) shares: a failure that must never look like
success, per-request seeds that a re-run repeats, and one run per output.

One run per output: ``<out>.lock`` held with flock while a stage writes ``out``. Two ``generate``
runs on one output would ask the teacher for the same paths twice and interleave their logs. The
kernel releases a flock when its holder dies, so a lock left by a killed run is free to take; the
file's pid then only names who left it, in a note.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from qr_ds.config import ConfigError, apply_override, from_dict, load_yaml, parse_override
from qr_ds.run_layout import RunDir


class StageFailed(RuntimeError):
    """A stage run that must not look like success; the message is what the user is told. The command
    line (``qr_ds.cli``) prints it and exits with ``status``: 1, the run failed; a subclass whose cause
    is the user's input (a config naming a server that never answered) says 2."""

    status = 1


def derive_seed(base: int, *parts: object) -> int:
    """A stable 31-bit seed from a base seed and a key (Python's hash() changes per process)."""
    h = hashlib.sha256("|".join(map(str, (base, *parts))).encode()).digest()
    return int.from_bytes(h[:4], "big") & 0x7FFFFFFF


# an override each stage takes, for its --help
OVERRIDE_EXAMPLES = {"generate": "limit=10 teacher.base_url=http://...", "filter": "judge.model=gpt-4o-mini judge_retries=0",
                     "embed": "batch_size=32 device=cpu"}


def add_stage_args(p, cls_name: str, stage: str) -> None:
    """The arguments generate, filter and embed share: the config, its overrides, the progress bar."""
    p.add_argument("config", type=Path, help=f"YAML with a {cls_name}, or a pipeline YAML with a {stage}: section")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, dotted keys as for train "
                                                                    f"({OVERRIDE_EXAMPLES[stage]})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="the same as a bare KEY=VALUE")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def stage_overrides(args) -> list[tuple[str, object]]:
    return [parse_override(s) for s in args.overrides + args.set]


def load_stage_config(cls, path: Path, stage: str, overrides: list[tuple[str, object]] = ()):
    """A stage's config from its own YAML, or from the ``<stage>:`` section of a pipeline YAML; refused
    (ConfigError) when one of its outputs would overwrite one of its inputs (``refuse_overwrite``)."""
    data = load_yaml(path)
    pipeline_problem(path, data, stage)
    if stage in data:
        if not isinstance(data[stage], dict):  # an empty section must not fall back to the whole file
            got = "empty" if data[stage] is None else f"a {type(data[stage]).__name__}, not a mapping"
            raise ConfigError(f"{path}: the '{stage}:' section is {got}; it needs the {stage} keys "
                              f"({', '.join(sorted(f.name for f in dataclasses.fields(cls) if f.init))})")
        data = data[stage]
    for dotted, value in overrides:
        apply_override(data, dotted, value)
    try:
        cfg = from_dict(cls, data)
        outputs, inputs = cfg.files()
        refuse_folders(inputs)
        refuse_overwrite(outputs, inputs, config_file=Path(path))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return cfg


PIPELINE_SECTIONS = ("generate", "filter", "embed")


def pipeline_problem(path: Path, data: dict, stage: str) -> None:
    """A pipeline YAML (a mapping of sections) names only the stages' sections, and this stage's: a
    misspelled one was read as the stage's own keys, or skipped unseen by the other stages."""
    import difflib

    if not any(key in data for key in PIPELINE_SECTIONS):
        return  # the stage's own YAML
    unknown = [k for k in data if k not in PIPELINE_SECTIONS]
    if unknown:
        near = difflib.get_close_matches(unknown[0], PIPELINE_SECTIONS, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise ConfigError(f"{path}: a pipeline YAML has the sections {', '.join(PIPELINE_SECTIONS)}; "
                          f"'{unknown[0]}:' is none of them{hint}")
    if stage not in data:
        raise ConfigError(f"{path}: this pipeline YAML has no '{stage}:' section (it has {', '.join(data)})")


def refuse_folders(inputs: dict[str, Path]) -> None:
    """Every stage input is a file: a folder there would fail later as an OS error naming no key."""
    for key, path in inputs.items():
        if path.is_dir():
            raise ConfigError(f"{_named(key)}: {path} is a folder; it needs a file")


# ---- nothing overwritten -------------------------------------------------------------------------

def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except RuntimeError:  # Python 3.11 says "Symlink loop" with a traceback
        raise ConfigError(f"{path}: a symlink loop (it points back to itself through links)") from None


def _same(a: Path, b: Path) -> bool:
    """One file by either name: symlinks resolved, hard links by inode."""
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:
        pass  # one does not exist yet: compare the resolved names
    return _resolved(a) == _resolved(b)


def training_run_of(path: Path) -> Path | None:
    """The training run folder (one with checkpoints/) that ``path`` is inside or is, if any."""
    for folder in [_resolved(path), *_resolved(path).parents]:
        if RunDir(folder).is_run():
            return folder
    return None


def _named(key: str) -> str:
    """How the user set it: "config key 'out'" for "out (its matrix)", "--out" for a flag."""
    key = key.split(" ")[0]
    return key if key.startswith("-") else f"config key '{key}'"


def refuse_overwrite(outputs: dict[str, Path], inputs: dict[str, Path], config_file: Path | None = None) -> None:
    """ConfigError when an output is an input (any name of it), sits inside an input folder, is the
    config file, another output of the same run, or lies inside a training run's folder."""
    inputs = dict(inputs)
    if config_file is not None:
        inputs["config file"] = config_file
    seen: dict[str, Path] = {}
    for okey, out in outputs.items():
        for ikey, inp in inputs.items():
            what = "config file" if ikey == "config file" else "input " + _named(ikey).removeprefix("config key ")
            if _same(out, inp):
                raise ConfigError(f"{_named(okey)}: {out} is also the {what} ({inp}); writing it would destroy "
                                  "the input: choose another output")
            if inp.is_dir() and _resolved(out).is_relative_to(_resolved(inp)):
                raise ConfigError(f"{_named(okey)}: {out} is inside the {what} folder ({inp})")
        for other, path in seen.items():
            if _same(out, path):
                raise ConfigError(f"{_named(okey)}: {out} would be written twice, as {other} and as {okey}: "
                                  "choose another name")
        seen[okey] = out
        run = training_run_of(out.parent)
        if run is not None:
            raise ConfigError(f"{_named(okey)}: {out} is inside the training run {run}; "
                              "write stage outputs outside run folders")


def free_name(beside: Path, prefix: str, suffix: str = "") -> Path:
    """``prefix<time>suffix`` beside ``beside``, a name no file has (-2, -3... for two within one second)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = beside.with_name(f"{prefix}{stamp}{suffix}"), 1
    while path.exists():
        n += 1
        path = beside.with_name(f"{prefix}{stamp}-{n}{suffix}")
    return path


def set_aside(out: Path, command: str, what: str) -> None:
    """--overwrite: the old ``out`` is renamed, not deleted: nothing is lost by a flag given by mistake."""
    if out.exists() and any(out.iterdir()):
        aside = free_name(out, f"{out.name}.replaced-")
        out.rename(aside)
        print(f"qr-ds {command}: --overwrite: moved the previous {what} {out} to {aside}", file=sys.stderr)


WORKING_DIRECTORY = "the working directory"


def held_inputs(folder: Path, inputs: dict[str, str | Path | None]) -> list[str]:
    """The keys of the inputs that are ``folder`` or lie in it, and WORKING_DIRECTORY when that does:
    what moving ``folder`` aside (--overwrite) would take with it."""
    root = Path(os.path.realpath(folder))

    def inside(path) -> bool:
        real = Path(os.path.realpath(path))
        return real == root or root in real.parents

    found = [key for key, path in inputs.items() if path is not None and Path(path).exists() and inside(path)]
    return found + ([WORKING_DIRECTORY] if inside(Path.cwd()) else [])


class LockHeld(StageFailed):
    """Another live run holds the output's lock."""


def lock_path(out: Path) -> Path:
    return out.with_name(out.name + ".lock")


def _holder(fd: int) -> str:
    """Who wrote the lock file: "pid N on HOST" (a lock on a shared filesystem may be another node's)."""
    os.lseek(fd, 0, os.SEEK_SET)
    pid, _, host = os.read(fd, 256).decode(errors="replace").strip().partition(" ")
    return f"pid {pid}" + (f" on {host}" if host else "") if pid else ""


def _acquire(path: Path) -> int:
    """An fd holding the flock on the file now at ``path`` (a holder may unlink it as we wait)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd) or "pid unknown"
            os.close(fd)
            raise LockHeld(f"another run ({holder}) is writing this output: {path} is held. "
                           f"Wait for it to finish; two runs on one output would overwrite each other's work.") from None
        except OSError:
            os.close(fd)
            raise
        try:
            same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            return fd
        os.close(fd)  # the previous holder removed the file after we opened it: lock the new one


@contextmanager
def output_lock(out: Path, log=lambda m: print(m, file=sys.stderr)) -> Iterator[None]:
    """Hold ``<out>.lock`` for the block; refuse (LockHeld) when a live run holds it. Where no lock can
    be taken (a filesystem without flock, such as Lustre mounted noflock; a folder above ``out`` that
    is not writable) the run goes on unlocked, saying so: the lock guards against a mistake, and
    refusing every run there would be worse than the mistake."""
    path, fd = lock_path(out), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _acquire(path)
    except LockHeld:
        raise
    except OSError as e:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)  # an empty file a filesystem without flock let us create
        log(f"note: no lock on {out} ({(e.strerror or str(e)).lower()}): two runs on it are not kept apart")
    if fd is None:
        yield
        return
    left_by = _holder(fd)
    if left_by:
        log(f"note: took over {path}, left by {left_by}, which no longer holds it (killed or crashed)")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # unlink before unlocking, so a waiter re-checks the inode
        os.close(fd)


def quiet_known_warnings() -> None:
    """bitsandbytes warns on every import on CPU that an optional Hub kernel is missing (it falls
    back to its own); the warning is harmless and says nothing about this run. For every process
    that may import it: the CLI and each training rank."""
    import logging

    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        lambda record: "kernels-community" not in record.getMessage())
