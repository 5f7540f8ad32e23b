"""`qr-ds` command line: one subcommand per pipeline stage.

Each stage module exposes ``register(subparsers)`` adding its parser with ``func`` set; modules
are imported only to build their parser, so ``qr-ds tasks`` never imports torch.

Errors are one line on stderr, never a traceback (set QR_DS_TRACEBACK=1 to get it instead):
exit 2 when the input is wrong (config, data, a missing file), exit 1 when the run failed (an OS
error such as a full disk or a read-only folder, naming the path; a stage's own failure summary;
or an unexpected exception, reported by type and message). A crash never exits 0.

That convention lives here alone (``main`` and ``describe_error``): a command raises, and never
prints its own error line or picks its own error status, so a new command cannot get either wrong.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import pickle
import sys

from qr_ds.stages import StageFailed, quiet_known_warnings

# (subcommand module, one-line help): each module defines register(subparsers).
COMMANDS = [
    "qr_ds.tasks.command",  # tasks, score
    "qr_ds.tasks.export",  # data export
    "qr_ds.teacher.command",  # generate
    "qr_ds.teacher.derive",  # derive (the second call of the Table 1 baselines that write questions)
    "qr_ds.filter.command",  # filter
    "qr_ds.embed.command",  # embed
    "qr_ds.train.command",  # train
    "qr_ds.eval.command",  # eval
    "qr_ds.report.command",  # report
    "qr_ds.demo",  # demo
    "qr_ds.models.command",  # models (packaged GGUF students: list, convert)
]


EPILOG = ("exit status: 0 done, 1 the run failed (disk, permissions, a stage's failure summary, "
          "an unexpected error), 2 bad input (config, data, missing file). "
          "Errors are one line; QR_DS_TRACEBACK=1 shows the traceback instead.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qr-ds", description="QR-Distill on DeepSpeed", epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # stage not built yet
                continue
            raise
        module.register(sub)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """As parse_args, but a KEY=VALUE after a flag (`train --config C --dry-run seed=3`) is an override
    like one before it: argparse takes a positional list in one run, and refused the rest. Anything
    else left over is refused by the subcommand's parser, whose usage line is the one that helps."""
    args, extra = parser.parse_known_args(argv)
    if not extra:
        return args
    if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = list(args.overrides) + extra
        return args
    innermost_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")


def innermost_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub)subcommand that ran, so `data export --bogus` shows export's usage."""
    while True:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        chosen = sub and sub.choices.get(getattr(args, sub.dest, None))
        if not chosen:
            return parser
        parser = chosen


# What Ctrl-C leaves and how to go on, per command: every stage keeps what it finished.
RESUME = {
    "generate": "paths written so far are kept; run the same command again to resume",
    "filter": "judge replies so far are cached; run the same command again to resume",
    "embed": "embeddings so far are cached; run the same command again to resume",
    "train": "the last saved checkpoint is kept; add --resume to the same command to continue from it",
    "eval": "nothing of this evaluation was written; run the same command again",
    "report": "run the same command again",
    "demo": "finished stages are kept; run the same command again to resume",
}


def main(argv: list[str] | None = None) -> int:
    quiet_known_warnings()
    parser = build_parser()
    args = parse_args(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if os.environ.get("QR_DS_TRACEBACK") == "1":
            raise
        print(f"\nqr-ds {args.command}: interrupted; {RESUME.get(args.command, 'run it again')}", file=sys.stderr)
        return 130  # 128 + SIGINT, what a shell reports for Ctrl-C
    except Exception as e:
        if os.environ.get("QR_DS_TRACEBACK") == "1":
            raise
        message, status = describe_error(e, getattr(args, "config", None))
        said = "failed" if isinstance(e, StageFailed) and status == 1 else "error"
        print(f"qr-ds {args.command}: {said}: {message}", file=sys.stderr)
        return status


# The exit status of each kind of error, the first that matches: 2 the input is wrong, 1 the run
# failed. A new kind is one entry here; whatever matches none is unexpected (1, with its type).
EXIT_STATUS: list[tuple[type, int]] = [
    (StageFailed, 1),  # its own status decides (see describe_error)
    (FileNotFoundError, 2), (IsADirectoryError, 2), (NotADirectoryError, 2),  # a path of the wrong kind
    (pickle.UnpicklingError, 2),  # a weights-only load refused a file that holds more than weights
    (ValueError, 2),  # ConfigError, RecordError, EmbeddingError and input checks
    (OSError, 1),  # disk full, read-only, permissions
]


def describe_error(e: Exception, config: str | os.PathLike | None = None) -> tuple[str, int]:
    """One line for the user and the exit status: 2 for bad input, 1 for a failed run. ``config``: the
    command's config file, put before a message that names a config key but not the file."""
    status = next((s for kind, s in EXIT_STATUS if isinstance(e, kind)), None)
    if status is None:
        return f"{type(e).__name__}: {e} (set QR_DS_TRACEBACK=1 for the traceback)", 1
    if isinstance(e, StageFailed):
        status = e.status
    message = describe_os_error(e) if isinstance(e, OSError) and e.strerror else str(e)
    if config is not None and message.startswith("config key "):
        message = f"{config}: {message}"
    return message, status


def describe_os_error(e: OSError) -> str:
    path = e.filename if e.filename2 is None else f"{e.filename} -> {e.filename2}"
    if e.errno == errno.ENOSPC:
        return f"no space left on {path}" if path is not None else "no space left on device"
    reason = (e.strerror or str(e)).lower()
    return f"{reason}: {path}" if path is not None else reason


if __name__ == "__main__":
    sys.exit(main())
