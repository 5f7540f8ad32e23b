"""How many processes a launch starts, and how they are divided between students: one rule for the
config, `qr-ds train` (this node or a hostfile), a SLURM allocation and torchrun.

The rule is the placement's (qr_ds/distributed/placement.py; docs/clusters.md states it in the same
words). Batch: each global micro-batch is ``micro_batch_paths`` x lcm(the students' rank counts) paths
(a colocated student's count is the world), cut into lcm chunks; a student's rank takes lcm / its
ranks chunks. An optimizer step sees that times ``grad_accum``: more ranks means more paths a step
and fewer steps an epoch.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from qr_ds.distributed.placement import AUTO_RANKS, PLACEMENTS
from qr_ds.distributed.topology import make_layout
from qr_ds.train.config import TrainConfig


@dataclass(frozen=True)
class World:
    """Processes the launcher starts, how that number was decided, and their nodes (for the plan)."""
    size: int
    source: str  # e.g. "--num-procs 3", "hostfile H (a:8 + b:8)", "SLURM (2 nodes x 8)"
    hosts: tuple[tuple[str, int], ...] = ()  # (node, processes on it) in rank order, when known


def student_ranks(cfg: TrainConfig, world: int, source: str = "the launcher") -> list[int]:
    """Ranks of each student in this world, by the rule above; ValueError naming the config key."""
    return PLACEMENTS[cfg.placement].student_ranks([s.ranks for s in cfg.students], world, source)


def fixed_world(cfg: TrainConfig) -> int | None:
    """The world a config asks for by itself (every rank count fixed), else None."""
    asked = [s.ranks for s in cfg.students]
    if AUTO_RANKS in asked:
        return None
    return PLACEMENTS[cfg.placement].fixed_world(asked)


def hostfile_world(path: Path) -> World:
    """Processes the DeepSpeed launcher starts for a hostfile, read by DeepSpeed's own parser, so a
    file it refuses (a host listed twice, a line without slots=N) is refused here too."""
    from deepspeed.launcher.runner import _parse_hostfile

    if not path.is_file():
        raise FileNotFoundError(f"--hostfile {path}: no such file")
    try:
        pool = _parse_hostfile(path.read_text().splitlines())
    except ValueError as e:
        raise ValueError(f"--hostfile {path}: {e}") from None
    hosts = tuple(pool.items())
    return World(sum(pool.values()), f"hostfile {path} ({' + '.join(f'{h}:{n}' for h, n in hosts)})", hosts)


def _count(value: str | None) -> int | None:
    """SLURM counts: '8', 'h100:8', '8(x2)' -> 8."""
    if not value:
        return None
    head = value.split("(")[0].split(",")[0].rsplit(":", 1)[-1]
    return int(head) if head.isdigit() else None


def slurm_world(env: dict | None = None, per_node: int | None = None) -> World | None:
    """The world the docs' SLURM script starts in this allocation: its nodes x processes a node (one
    torchrun per node with one rank per GPU, or srun tasks when there are several a node)."""
    env = os.environ if env is None else env
    nodes = _count(env.get("SLURM_NNODES")) or _count(env.get("SLURM_JOB_NUM_NODES"))
    if nodes is None:
        return None
    tasks = _count(env.get("SLURM_NTASKS_PER_NODE"))
    per_node = per_node or _count(env.get("SLURM_GPUS_PER_NODE")) or _count(env.get("SLURM_GPUS_ON_NODE")) or (
        tasks if tasks and tasks > 1 else None)
    if per_node is None:
        raise ValueError(f"SLURM allocation of {nodes} node(s) names no GPUs a node (SLURM_GPUS_PER_NODE) "
                         "nor several tasks a node: give --num-procs N (processes a node)")
    return World(nodes * per_node, f"SLURM ({nodes} nodes x {per_node})",
                 tuple((f"node {i}", per_node) for i in range(nodes)))


def nodes_world(nnodes: int, per_node: int, counted_by: str | None = None) -> World:
    """``counted_by``: where per_node came from when not from --num-procs."""
    procs = f"{per_node} a node by {counted_by}" if counted_by else f"--num-procs {per_node}"
    source = f"--nnodes {nnodes} x {procs}" if nnodes > 1 else procs
    return World(nnodes * per_node, source, tuple((f"node {i}", per_node) for i in range(nnodes)))


def local_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def global_batch(cfg: TrainConfig, ranks: list[int]) -> int:
    """Paths in one optimizer step (see the module's rule)."""
    return cfg.micro_batch_paths * math.lcm(*ranks) * cfg.grad_accum


def _span(first: int, last: int) -> str:
    return f"rank {first}" if first == last else f"ranks {first}-{last}"


def _nodes_of(world: World, ranks: tuple[int, ...]) -> str:
    """Which nodes hold these ranks (ranks fill the nodes in order, as both launchers number them)."""
    if not world.hosts:
        return ""
    names, start = [], 0
    for host, n in world.hosts:
        if any(start <= r < start + n for r in ranks):
            names.append(host)
        start += n
    return " on " + ", ".join(names)


def plan(cfg: TrainConfig, world: World) -> list[str]:
    """What each rank will run, and the batch it makes: the dry run's printout."""
    ranks = student_ranks(cfg, world.size, world.source)
    layout = make_layout(ranks, world.size, cfg.placement)
    lines = [f"world: {world.size} processes ({world.source})"]
    for s, block in zip(cfg.students, layout.student_ranks):
        lines.append(f"{_span(block[0], block[-1])}{_nodes_of(world, block)}: student {s.name!r} ({s.model}, "
                     f"{s.finetune}, {s.dtype}, lr {s.lr:g}, {s.deepspeed}), data-parallel over {len(block)}")
    lines.append(f"batch: {cfg.micro_batch_paths} paths a chunk (micro_batch_paths) x {layout.n_chunks} chunks "
                 f"(lcm of the students' ranks) x grad_accum {cfg.grad_accum} = {global_batch(cfg, ranks)} "
                 "paths an optimizer step; steps an epoch = selected paths / that")
    if world.hosts and not layout.placement.students_share_ranks:
        lines.append("note: under torchrun with c10d the nodes are numbered by the rendezvous, not by name: "
                     "which node holds which student may differ; nothing depends on it")
    return lines
