"""What one micro-step measured, per student, summed over ranks on the coordinator."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch


@dataclass
class StudentStats:
    sft_loss_sum: float = 0.0  # SFT loss per token, summed over the routed paths
    routed: float = 0.0  # paths routed to the student
    tokens: float = 0.0  # tokens it trained on
    compute_s: float = 0.0  # forward, probes, backward and step
    lr: float = 0.0  # after this micro-step's engine.step (reported by the student's first rank)
    grad_norm: float = 0.0  # global norm before clipping, on accumulation boundaries; NaN before the first


@dataclass
class StepStats:
    students: list[StudentStats]
    mutual_loss: float = 0.0

    @classmethod
    def zeros(cls, n_students: int) -> StepStats:
        return cls([StudentStats() for _ in range(n_students)])

    def to_tensor(self) -> torch.Tensor:
        """One float64 row per student, then one for the mutual loss: a single collective moves it all."""
        rows = [[getattr(s, f.name) for f in fields(StudentStats)] for s in self.students]
        rows.append([self.mutual_loss] + [0.0] * (len(fields(StudentStats)) - 1))
        return torch.tensor(rows, dtype=torch.float64)

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> StepStats:
        names = [f.name for f in fields(StudentStats)]
        students = [StudentStats(**dict(zip(names, map(float, row.tolist())))) for row in t[:-1]]
        return cls(students, float(t[-1, 0]))


@dataclass
class MicroStep:
    """One micro-step's record for the metrics: the summed stats on every rank; the coordinator's
    losses and router statistics on the coordinator only."""
    stats: StepStats
    hard: torch.Tensor  # [P, S] the routing
    exchange_s: float
    exchange_bytes: int
    lambda2: float
    mutual_loss: float | None = None  # None where no path had a mutual term (never a made-up 0.0)
    nats_per_char: torch.Tensor | None = None  # [P, S] every student's loss on every path, NaN = not measured
    router: dict[str, float] = field(default_factory=dict)  # router_loss, router/<stat>[/<student index>]
