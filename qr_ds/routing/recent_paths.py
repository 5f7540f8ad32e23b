"""The paths the router saw last: the current router's mean P(on) over them is each student's
routing rate, the value the rate balance holds at its target."""
from __future__ import annotations

import torch


class RecentPaths:
    """Embeddings of the last ``size`` routed paths (at least the latest batch).

    One batch's rate follows which styles happened to land in it, and penalising that pulls every
    path of the batch towards the target. A running average of past batches' rates removes that
    noise but lags behind a router that is moving, and a lagging rate overshoots: on planted
    preferences an EMA over ~10 batches let the rate swing to 0.38-0.61, one over ~33-100 batches
    from near 0 to near 1 (docs/method.md). Re-scoring recent paths with the current router has
    neither problem.
    """

    def __init__(self, size: int, dim: int):
        if size < 0:
            raise ValueError(f"RecentPaths: size must be >= 0, got {size}")
        self.size = size
        self.embeddings = torch.zeros(0, dim)

    def add(self, batch: torch.Tensor) -> torch.Tensor:
        """Append a batch's embeddings [P, dim]; return every path now kept."""
        if batch.dim() != 2 or batch.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"RecentPaths.add: expected embeddings [P, {self.embeddings.shape[1]}], "
                             f"got {tuple(batch.shape)}")
        kept = torch.cat([self.embeddings.to(batch), batch.detach()])
        self.embeddings = kept[-max(self.size, len(batch)):].clone()
        return self.embeddings

    def state_dict(self) -> dict:
        return {"embeddings": self.embeddings.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.embeddings = state["embeddings"].clone()
