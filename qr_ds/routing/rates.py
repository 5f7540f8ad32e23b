"""Routing rates per student and per path key (style, level): the one place that counts them, for the
training metrics (hard routing of a batch) and the report (the final router's probabilities), Fig. 4/5."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch


class RoutingTally:
    """Accumulates how often paths of each key went to each student, across batches."""

    def __init__(self, students: list[str]):
        self.students = list(students)
        self.routed: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(self.students))
        self.seen: dict[str, int] = defaultdict(int)

    def update(self, alpha: torch.Tensor, keys: list[str]) -> None:
        if alpha.dim() != 2 or alpha.shape != (len(keys), len(self.students)):
            raise ValueError(
                f"RoutingTally.update: alpha {tuple(alpha.shape)} must be [len(keys)={len(keys)}, "
                f"len(students)={len(self.students)}]"
            )
        # summed per key with bincount, not a Python loop over rows: the report tallies every path of
        # the pool at once (row by row: 1.8 CPU-s at 1M paths here, against 0.1)
        first_seen: dict[str, int] = {}
        group = np.fromiter((first_seen.setdefault(k, len(first_seen)) for k in keys), np.int64, len(keys))
        a = alpha.detach().double().cpu().numpy()
        counts = np.bincount(group, minlength=len(first_seen))
        sums = np.stack([np.bincount(group, a[:, s], len(first_seen)) for s in range(a.shape[1])], axis=1)
        for key, g in first_seen.items():
            self.seen[key] += int(counts[g])
            self.routed[key] = [r + x for r, x in zip(self.routed[key], sums[g].tolist())]

    def rates(self) -> dict[str, dict[str, float]]:
        """{key: {student: fraction of key's paths routed to student}} in first-seen key order."""
        return {
            k: {s: r / self.seen[k] for s, r in zip(self.students, self.routed[k])} for k in self.seen
        }

    def per_student(self) -> dict[str, dict[str, tuple[float, int]]]:
        """{student: {key: (routed, seen)}}, keys sorted: what each student got of each key's paths."""
        keys = sorted(self.seen)
        return {s: {k: (self.routed[k][i], self.seen[k]) for k in keys} for i, s in enumerate(self.students)}


def routing_rates(alpha: torch.Tensor, keys: list[str], students: list[str]) -> dict[str, dict[str, float]]:
    tally = RoutingTally(students)
    tally.update(alpha, keys)
    return tally.rates()
