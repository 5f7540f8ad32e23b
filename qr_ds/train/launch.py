"""What every rank runs: `deepspeed --module qr_ds.train.launch --config C [--resume [auto]] [key=value ...]`
(or `deepspeed launch/train.py ...`, or torchrun). Overrides use dotted keys (``lambda2=0``,
``students.1.lr=1e-4`` or ``students[1].lr=1e-4``).

Rank 0 runs `qr-ds train`'s checks (preflight.py) before the first collective, since torchrun and srun
start no `qr-ds train`; then it builds the strategy (process groups), hands it to the Trainer, and on
failure names this rank and any rank that died or was stopped before leaving at once.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from importlib.util import find_spec
from pathlib import Path
from typing import NoReturn

from qr_ds.run_layout import RunDir


def script() -> Path:
    """launch/train.py as installed (package data ``qr_ds.launch``) or in this checkout."""
    try:
        spec = find_spec("qr_ds.launch.train")
    except ModuleNotFoundError:  # an editable install maps only qr_ds itself: the checkout has it
        spec = None
    return Path(spec.origin) if spec and spec.origin else Path(__file__).resolve().parents[2] / "launch" / "train.py"


RESUME_HELP = ("continue from OUTPUT_DIR/checkpoints/latest; `--resume auto` continues when a checkpoint "
               "is there and starts the run when none is (one command for a first run and a requeue)")


def add_resume_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", nargs="?", const="yes", default=None, metavar="auto", help=RESUME_HELP)


def resume_mode(args) -> str:
    """'yes', 'no' or 'auto'. `--resume key=value` has argparse take the override for the flag's
    value: it goes back to the overrides. Any other value is refused (`--resume no` read as a
    request to resume, or not, is a guess either way)."""
    if args.resume is None:
        args.resume = "no"
    elif args.resume not in ("yes", "auto"):
        if "=" not in args.resume:
            raise ValueError(f"--resume {args.resume}: give --resume alone, or --resume auto")
        args.overrides.insert(0, args.resume)
        args.resume = "yes"
    return args.resume


def wants_resume(mode: str, run: RunDir) -> bool:
    """Whether this start resumes: auto resumes a run that has a complete checkpoint. A latest that
    cannot be read counts as one, so preflight names what is wrong with it."""
    if mode != "auto":
        return mode == "yes"
    try:
        return run.latest() is not None
    except ValueError:
        return True


class Refused(Exception):
    """Rank 0's checks refused the run; every rank stops before the first collective."""


def checked_layout(cfg, resume: bool, checked: bool):
    """The strategy's layout function: the checks on rank 0 first (``checked``: `qr-ds train` ran them,
    over the whole pool, before launching), then the ranks of each student."""
    from qr_ds.distributed.topology import make_layout
    from qr_ds.train.world import student_ranks

    def layout(world_size: int):
        if not checked:
            verdict(cfg, world_size, resume)
        return make_layout(student_ranks(cfg, world_size, "the launcher (WORLD_SIZE)"), world_size, cfg.placement)
    return layout


def verdict(cfg, world_size: int, resume: bool, poll_s: float = 0.2) -> None:
    """Rank 0 checks; the others wait for its answer on the rendezvous store (no collective, so a long
    pool scan meets no collective timeout) and all raise Refused when it found problems."""
    import torch.distributed as dist
    from torch.distributed.distributed_c10d import _get_default_store

    from qr_ds.train.preflight import problems
    from qr_ds.train.world import World

    key, rank = "qr_ds/preflight", dist.get_rank()
    store = _get_default_store()
    if rank == 0:
        found = (problems(cfg, World(world_size, "the launcher (WORLD_SIZE)"), resume=resume)
                 or hold_output_lock(cfg.output_dir))
        for line in found:  # before the verdict: the launcher stops this rank once another has left
            print(f"[qr_ds] preflight: {line}", file=sys.stderr, flush=True)
        store.set(key, "\n".join(found))
        if found:
            deadline = time.time() + 10  # every rank says why it stops before the launcher stops them
            while store.add(f"{key}/read", 0) < world_size - 1 and time.time() < deadline:
                time.sleep(poll_s)
            raise Refused(f"{len(found)} problem(s) found by preflight")
        return
    while not store.check([key]):
        time.sleep(poll_s)
    found = store.get(key).decode().splitlines()
    if found:
        print(f"[qr_ds] rank {rank} refused: rank 0's checks refused the run ({len(found)} problem(s), "
              "listed by rank 0)", file=sys.stderr, flush=True)
    store.add(f"{key}/read", 1)
    if found:
        raise Refused("")


def hold_output_lock(out: Path) -> list[str]:
    """Rank 0 of a launch not made by `qr-ds train` (which holds it itself) holds ``<output_dir>.lock``
    until it exits: a second job into the same folder is refused, not interleaved. [] once held."""
    import atexit

    from qr_ds.stages import LockHeld, output_lock

    held = output_lock(out)
    try:
        held.__enter__()
    except LockHeld as e:
        return [f"config key 'output_dir': {e}"]
    atexit.register(held.__exit__, None, None, None)  # a clean exit removes the file; a crash leaves it, named
    return []


class Terminated(Exception):
    """The launcher is stopping this rank (another rank failed)."""


def _terminated(signum, frame):
    raise Terminated(f"stopped by signal {signum}, most likely because another rank failed")


def die_with_launcher() -> None:
    """A rank whose launcher dies must die with it. Otherwise it trains on as an orphan, its peers
    keep waiting on it, and no launcher is left to stop the job or log it (measured: killing one
    node's torchrun left its rank training and the other node ran to the end). Linux's parent-death
    signal does it; a launcher already gone before it is set is caught by the parent pid changing."""
    if not sys.platform.startswith("linux") or "LOCAL_RANK" not in os.environ:
        return
    import ctypes

    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:
        print(f"[qr_ds] rank {os.environ.get('RANK', '?')}: its launcher (pid {parent}) is gone", file=sys.stderr)
        os._exit(1)


def report_lost_ranks(ranks_dir: Path, wait_s: float = 3.0) -> None:
    """Name the rank that died or hangs stopped. A dead rank's sockets close while it is still
    exiting, so poll briefly; the launcher waits 30 s after SIGTERM, which this rank ignores meanwhile."""
    from qr_ds.distributed.health import dead_ranks, other_hosts, stopped_ranks

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    deadline = time.time() + wait_s
    while not (gone := dead_ranks(ranks_dir)) and time.time() < deadline:
        time.sleep(0.1)
    for r, pid in gone:
        print(f"[qr_ds] rank {r} (pid {pid}) is gone: it died first", file=sys.stderr, flush=True)
    stopped = stopped_ranks(ranks_dir)
    for r, pid in stopped:
        print(f"[qr_ds] rank {r} (pid {pid}) is stopped (SIGSTOP or a debugger): the collectives waited on it",
              file=sys.stderr, flush=True)
    remote = other_hosts(ranks_dir)
    if not gone and not stopped and remote:  # nothing here died: look at the other nodes' logs
        print("[qr_ds] every rank on this node is alive; ranks on other nodes: " +
              ", ".join(f"{r} on {host} (pid {pid})" for r, pid, host in remote), file=sys.stderr, flush=True)


def keep_pool_digest(run, pool) -> None:
    from qr_ds.data.jsonl import file_sha256

    tmp = run.pool_digest.with_name(run.pool_digest.name + ".tmp")
    tmp.write_text(file_sha256(pool) + "\n")
    os.replace(tmp, run.pool_digest)


def keep_config(run, cfg, resume: bool, text: str) -> None:
    """Write the run's config.yaml; a resume that changed a setting it may change (max_steps, ...) first
    keeps the one the run had, named by the step it resumes from, and says which keys are new."""
    import shutil

    if resume:
        from qr_ds.train.preflight import resume_config_changes

        for note in resume_config_changes(cfg)[1]:
            print(f"[qr_ds] {note}", flush=True)
    if resume and run.config.is_file() and run.config.read_text(encoding="utf-8") != text:
        kept = run.config_before(run.require_latest().step)
        if not kept.exists():  # a second change before the next checkpoint keeps the first one's config
            shutil.copyfile(run.config, kept)
            print(f"[qr_ds] resume: the run's earlier config.yaml is kept as {kept.name}", flush=True)
    tmp = run.config.with_name(run.config.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, run.config)  # a kill mid-write leaves the old config.yaml or the new one, never half


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", required=True, help="training YAML (see docs/config-reference.md)")
    add_resume_flag(p)
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the DeepSpeed launcher
    # `qr-ds train` ran the checks and holds the output lock: an argument, since the DeepSpeed runner
    # passes only a few environment variables (MLFLOW*, NCCL*, PYTHON*, ...) to other hosts over pdsh
    p.add_argument("--preflight-done", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_intermixed_args(argv)  # KEY=VALUE also after a flag, as `qr-ds train` takes them
    try:
        mode = resume_mode(args)
    except ValueError as e:
        p.error(str(e))

    import yaml

    from qr_ds.config import load_config, parse_override, to_dict
    from qr_ds.stages import quiet_known_warnings
    from qr_ds.train.config import TrainConfig

    quiet_known_warnings()
    rank = int(os.environ.get("RANK", "0"))
    die_with_launcher()
    signal.signal(signal.SIGTERM, _terminated)
    run = None
    try:
        cfg = load_config(TrainConfig, args.config, dict(parse_override(o) for o in args.overrides))
        cfg.run_name = cfg.run_name or Path(args.config).stem  # trackers name the config, not the folder
        run = cfg.run
        from qr_ds.distributed.health import write_pid_file
        from qr_ds.distributed.shm_lock import check_shm_build_lock
        from qr_ds.distributed.strategy import Strategy
        from qr_ds.train.trainer import Trainer

        write_pid_file(run.ranks, rank)  # before any collective can fail
        check_shm_build_lock()
        resume = wants_resume(mode, run)
        strategy = Strategy(checked_layout(cfg, resume, args.preflight_done), cfg.backend, cfg.collective_timeout_s)
        trainer = Trainer(cfg, strategy)
        if strategy.is_coordinator:
            keep_config(run, cfg, resume, yaml.safe_dump(to_dict(cfg), sort_keys=False))
            if not resume or not run.pool_digest.is_file():  # what a resume checks its pool against
                keep_pool_digest(run, cfg.data.pool)
        trainer.fit(resume=resume)
    except Refused:  # said already; no collective ran, so there is no peer to name
        os._exit(2)
    except Exception as e:
        if run is not None and run.stop_marker.is_file():  # a stop of `qr-ds train`, said as one, not as a
            # failure; by the marker, since its SIGTERM may come wrapped (Triton's interpreter wraps it)
            print(f"[qr_ds] rank {rank} stopped: {run.stop_marker.read_text().strip()}", file=sys.stderr, flush=True)
            os._exit(128 + signal.SIGTERM)
        fail(rank, e, run)
    return 0


def fail(rank: int, e: Exception, run) -> NoReturn:
    """Name the rank, then leave at once: peers blocked in a collective must not wait on us."""
    print(f"[qr_ds] rank {rank} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    if run is not None:
        report_lost_ranks(run.ranks)
    if os.environ.get("QR_DS_TRACEBACK", "0") == "1":
        traceback.print_exc()
    sys.stderr.flush()
    os._exit(1)


if __name__ == "__main__":
    sys.exit(main())
