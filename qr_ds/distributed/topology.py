"""Which rank runs which student on which data: a pure function of the config and world size.

The placement (placement.py) gives each student its block of global ranks. Each global micro-batch
is cut into ``n_chunks`` = lcm(ranks of each student) equal chunks; a student with n ranks gives each
rank n_chunks / n consecutive chunks. The ranks that hold the same chunk in each student form that
chunk's cross-student group, which all-gathers projected states.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from qr_ds.distributed.placement import PLACEMENTS, Blocks, Placement


@dataclass(frozen=True)
class Layout:
    placement: Placement
    world_size: int
    student_ranks: Blocks  # student -> its global ranks (its data-parallel group)
    n_chunks: int

    @property
    def n_students(self) -> int:
        return len(self.student_ranks)

    def students_on(self, rank: int) -> list[int]:
        return [s for s, ranks in enumerate(self.student_ranks) if rank in ranks]

    def dp_rank(self, student: int, rank: int) -> int:
        return self.student_ranks[student].index(rank)

    def chunks_of(self, student: int, rank: int) -> list[int]:
        n = len(self.student_ranks[student])
        d = self.dp_rank(student, rank)
        per = self.n_chunks // n
        return list(range(d * per, (d + 1) * per))

    def chunk_owner(self, student: int, chunk: int) -> int:
        ranks = self.student_ranks[student]
        return ranks[chunk // (self.n_chunks // len(ranks))]

    def cross_group(self, chunk: int) -> tuple[int, ...]:
        """Ranks holding ``chunk``, one per student in student order (a rank repeats where students share ranks)."""
        return tuple(self.chunk_owner(s, chunk) for s in range(self.n_students))

    def cross_groups(self) -> list[tuple[int, ...]]:
        """Distinct cross-student groups in a fixed order, so every rank creates them identically."""
        seen: dict[tuple[int, ...], None] = {}
        for k in range(self.n_chunks):
            seen.setdefault(tuple(sorted(set(self.cross_group(k)))), None)
        return list(seen)


def make_layout(rank_counts: list[int], world_size: int, placement: str) -> Layout:
    if not rank_counts or any(n < 1 for n in rank_counts):
        raise ValueError(f"every student needs at least one rank, got {rank_counts}")
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; use {' or '.join(map(repr, PLACEMENTS))}")
    blocks = PLACEMENTS[placement].blocks(rank_counts, world_size)
    return Layout(PLACEMENTS[placement], world_size, blocks, math.lcm(*map(len, blocks)))


def local_rank() -> int:
    """This process's index on its node, as torchrun and the DeepSpeed launcher set it (0 without one)."""
    return int(os.environ.get("LOCAL_RANK", "0"))
