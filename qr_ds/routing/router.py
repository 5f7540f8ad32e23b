"""The router of eq. 2: an MLP from a frozen-encoder path embedding to per-student on/off logits."""
from __future__ import annotations

import math

import torch
from torch import nn


class Router(nn.Module):
    def __init__(self, in_dim: int, n_students: int, hidden: int = 256, dropout: float = 0.0, start_on: float = 0.5):
        """``start_on``: the P(on) every path starts near (the output biases' on/off gap); a router that
        starts at 0.5 while its prior is near 1 halves each student's batch in the first steps."""
        super().__init__()
        if in_dim < 1 or n_students < 1 or hidden < 1:
            raise ValueError(
                f"Router: in_dim, n_students and hidden must be >= 1, got {in_dim}, {n_students}, {hidden}"
            )
        self.in_dim, self.n_students = in_dim, n_students
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_students * 2)
        )
        if not 0.0 < start_on < 1.0:
            raise ValueError(f"Router: start_on must be in (0, 1), got {start_on}")
        with torch.no_grad():
            gap = math.log(start_on / (1 - start_on))
            self.net[-1].bias.view(n_students, 2).add_(torch.tensor([-gap / 2, gap / 2]))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h [P, in_dim] -> logits [P, S, 2]; index 0 is "off", index 1 is "on"."""
        if h.dim() != 2 or h.shape[1] != self.in_dim:
            raise ValueError(f"Router.forward: expected embeddings [P, {self.in_dim}], got {tuple(h.shape)}")
        h = h.to(self.net[0].weight.dtype)
        return self.net(h).view(h.shape[0], self.n_students, 2)
