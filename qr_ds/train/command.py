"""`qr-ds train`: check everything the ranks will need, then start launch/train.py under the DeepSpeed
launcher (this node, or a hostfile's nodes). `--dry-run` checks and prints what each rank will run,
for the world a hostfile, `--nnodes` x `--num-procs` or the SLURM allocation gives, and starts nothing."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from qr_ds.stages import output_lock, set_aside
from qr_ds.train.launch import add_resume_flag, resume_mode, script, wants_resume
from qr_ds.train.supervise import run_launcher

LAUNCH = script()  # launch/train.py, installed or in this checkout


def register(sub) -> None:
    p = sub.add_parser("train", help="train students together (wraps `deepspeed launch/train.py`)",
                       description="Runs `deepspeed [--hostfile H] --num_gpus N launch/train.py --config C`. "
                                   "N defaults to the world the students' ranks ask for under their placement, "
                                   "or this node's GPUs when a student has ranks: auto.")
    p.add_argument("--config", required=True, type=Path)
    add_resume_flag(p)
    p.add_argument("--overwrite", action="store_true",
                   help="output_dir already holds a run: move it aside (to OUTPUT_DIR.replaced-TIME) and start again")
    p.add_argument("--num-procs", type=int, default=None, help="processes on this node (with --nnodes: on each node)")
    p.add_argument("--hostfile", type=Path, default=None, help="DeepSpeed hostfile for multi-node runs")
    p.add_argument("--master-port", type=int, default=None, help="default: a free port on this node")
    p.add_argument("--dry-run", action="store_true",
                   help="run every check and print what each rank will run; start nothing (e.g. on a login node)")
    p.add_argument("--nnodes", type=int, default=1,
                   help="with --dry-run: nodes of the torchrun/SLURM launch to check (default: the SLURM "
                        "allocation's, when run inside one)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.set_defaults(func=run)


def launcher_command(args, n_procs: int) -> list[str]:
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner"]
    if args.hostfile:
        cmd += ["--hostfile", str(args.hostfile)]
    else:
        cmd += ["--num_gpus", str(n_procs)]
    cmd += ["--master_port", str(args.master_port or _free_port())]
    cmd += [str(LAUNCH), "--config", str(args.config), "--preflight-done"]
    if args.resume != "no":
        cmd += ["--resume", args.resume] if args.resume == "auto" else ["--resume"]
    return cmd + list(args.overrides)


def usage_error(message: str) -> int:
    print(f"qr-ds train: error: {message}", file=sys.stderr)
    return 2


def run(args) -> int:
    from qr_ds.config import load_config, parse_override
    from qr_ds.train.config import TrainConfig
    from qr_ds.train.preflight import problems
    from qr_ds.train.world import plan

    mode = resume_mode(args)
    # Validate here so a bad config, or anything the ranks would miss, fails before any process starts.
    cfg = load_config(TrainConfig, args.config, dict(parse_override(o) for o in args.overrides))
    if mode != "no" and args.overwrite:
        return usage_error(f"--resume continues the run in {cfg.output_dir} and --overwrite sets it aside: give one")
    if args.nnodes > 1 and args.hostfile is not None:
        return usage_error(f"--nnodes {args.nnodes} and --hostfile {args.hostfile}: the hostfile names the nodes; give one")
    if args.nnodes > 1 and not args.dry_run:
        return usage_error(f"--nnodes {args.nnodes} is for --dry-run: `qr-ds train` starts ranks on this node or "
                           "on a --hostfile's nodes; on SLURM the ranks start by srun + torchrun (docs/clusters.md)")
    world = launch_world(args, cfg)
    notes: list[str] = []
    found = problems(cfg, world, resume=wants_resume(mode, cfg.run), overwrite=args.overwrite, config_file=args.config,
                     notes=notes)
    for line in notes:
        print(f"qr-ds train: note: {args.config}: {line}", file=sys.stderr)
    for line in found:
        print(f"qr-ds train: error: {args.config}: {line}", file=sys.stderr)
    if found:
        return 2
    if args.dry_run:
        print("\n".join(plan(cfg, world)))
        print(f"qr-ds train: dry run: every check passed for {args.config}; nothing was started")
        return 0
    env = dict(os.environ)
    env.setdefault("DS_ACCELERATOR", "cpu" if not _has_cuda() else "cuda")
    # held for the whole job: a second `qr-ds train` into the same output_dir passes every check
    # (nothing is written yet) and its ranks would then write one folder with these
    with output_lock(cfg.output_dir):
        if args.overwrite:
            set_aside(cfg.output_dir, "train", "run")
        return run_launcher(launcher_command(args, world.size), env, cfg.run.stop_marker)


def launch_world(args, cfg):
    """The processes the launch will start: a hostfile's slots; --nnodes x --num-procs; in a dry run
    inside a SLURM allocation, its nodes x GPUs; else --num-procs, the config's fixed ranks or this
    node's GPUs. Bad input raises ValueError (exit 2)."""
    from qr_ds.train.world import fixed_world, hostfile_world, local_gpus, nodes_world, slurm_world

    for flag, value, top in (("--num-procs", args.num_procs, None), ("--nnodes", args.nnodes, None),
                             ("--master-port", args.master_port, 65535)):
        if value is not None and (value < 1 or (top is not None and value > top)):
            raise ValueError(f"{flag} {value}: give a number from 1" + (f" to {top}" if top else ""))
    if args.hostfile is not None:
        return hostfile_world(args.hostfile)
    if args.dry_run and args.nnodes == 1 and (slurm := slurm_world(per_node=args.num_procs)) is not None:
        return slurm
    fixed = fixed_world(cfg) if args.nnodes == 1 and not args.num_procs else None
    per_node = args.num_procs or fixed or local_gpus()
    if not per_node and args.nnodes > 1:
        raise ValueError(f"--nnodes {args.nnodes}: this node shows no GPU to count the processes on each node: "
                         "give --num-procs N")
    if not per_node:
        raise ValueError(f"{args.config}: config key 'students[].ranks': 'auto' shares the world the launcher "
                         "starts, and this node shows no GPU to count: give --num-procs N (or --hostfile)")
    # say where the count came from: "--num-procs 2" when none was given misled
    how = None if args.num_procs else "the students' fixed ranks" if fixed else "this node's GPUs"
    return nodes_world(args.nnodes, per_node, how)


def _free_port() -> int:
    """A free port on this (the launching) node, so two jobs on one machine never collide on 29500."""
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
