"""`qr-ds train`: start launch/train.py under the DeepSpeed launcher with one process per student rank."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from qr_ds.train.launch import script  # launch/train.py, installed or in this checkout
LAUNCH = script()


def register(sub) -> None:
    p = sub.add_parser("train", help="train students together (wraps `deepspeed launch/train.py`)",
                       description="Runs `deepspeed [--hostfile H] --num_gpus N launch/train.py --config C`. "
                                   "N defaults to the sum of the students' ranks (separate placement).")
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="output_dir already holds a run: move it aside (to OUTPUT_DIR.replaced-TIME) and start again")
    p.add_argument("--num-procs", type=int, default=None, help="processes on this node")
    p.add_argument("--hostfile", type=Path, default=None, help="DeepSpeed hostfile for multi-node runs")
    p.add_argument("--master-port", type=int, default=None, help="default: a free port on this node")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.set_defaults(func=run)


def launcher_command(args, n_procs: int) -> list[str]:
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner"]
    if args.hostfile:
        cmd += ["--hostfile", str(args.hostfile)]
    else:
        cmd += ["--num_gpus", str(n_procs)]
    cmd += ["--master_port", str(args.master_port or _free_port())]
    cmd += [str(LAUNCH), "--config", str(args.config)]
    if args.resume:
        cmd.append("--resume")
    return cmd + list(args.overrides)


def run(args) -> int:
    from qr_ds.config import load_config, parse_override
    from qr_ds.train.config import TrainConfig
    from qr_ds.train.preflight import problems

    # Validate here so a bad config, or anything the ranks would miss, fails before any process starts.
    cfg = load_config(TrainConfig, args.config, dict(parse_override(o) for o in args.overrides))
    n = args.num_procs or (sum(s.ranks for s in cfg.students) if cfg.placement == "separate"
                           else cfg.students[0].ranks)
    if args.resume and args.overwrite:
        print(f"qr-ds train: error: --resume continues the run in {cfg.output_dir} and --overwrite sets it aside: "
              "give one", file=sys.stderr)
        return 2
    found = problems(cfg, world_size(args, n), resume=args.resume, overwrite=args.overwrite)
    for line in found:
        print(f"qr-ds train: error: {args.config}: {line}", file=sys.stderr)
    if found:
        return 2
    if args.overwrite:
        set_aside(cfg.output_dir)
    env = dict(os.environ)
    env.setdefault("DS_ACCELERATOR", "cpu" if not _has_cuda() else "cuda")
    return subprocess.call(launcher_command(args, n), env=env)


def set_aside(out: Path) -> None:
    """--overwrite: the old run is renamed, not deleted: nothing is lost by a flag given by mistake."""
    import time

    if out.exists() and any(out.iterdir()):
        aside = out.with_name(f"{out.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        out.rename(aside)
        print(f"qr-ds train: --overwrite: moved the previous run {out} to {aside}", file=sys.stderr)


def world_size(args, n_procs: int) -> int:
    """Processes the launcher will start: a hostfile's slots, else the count on this node."""
    from qr_ds.train.preflight import hostfile_slots

    if args.hostfile is None:
        return n_procs
    if not args.hostfile.is_file():
        raise FileNotFoundError(f"--hostfile {args.hostfile}: no such file")
    return hostfile_slots(args.hostfile)


def _free_port() -> int:
    """A free port on this (the launching) node, so two jobs on one machine never collide on 29500."""
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
