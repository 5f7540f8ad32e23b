"""The paths the router saw last: the current router's mean P(on) over them is each student's
routing rate, the value the rate balance holds at its target."""
from __future__ import annotations

import torch

from qr_ds.routing.losses import trainable_mean


class RecentPaths:
    """Embeddings of the last ``size`` routed paths (at least the latest batch), and which students
    the data lets train on each.

    One batch's rate follows which styles happened to land in it, and penalising that pulls every
    path of the batch towards the target. A running average of past batches' rates removes that
    noise but lags behind a router that is moving, and a lagging rate overshoots: on planted
    preferences an EMA over ~10 batches let the rate swing to 0.38-0.61, one over ~33-100 batches
    from near 0 to near 1 (docs/method.md). Re-scoring recent paths with the current router has
    neither problem.
    """

    def __init__(self, size: int, dim: int, students: int):
        if size < 0:
            raise ValueError(f"RecentPaths: size must be >= 0, got {size}")
        self.size = size
        self.embeddings = torch.zeros(0, dim)
        self.trainable = torch.zeros(0, students, dtype=torch.bool)

    def add(self, batch: torch.Tensor, trainable: torch.Tensor | None = None) -> torch.Tensor:
        """Append a batch's embeddings [P, dim] and which pairs the data lets train [P, S] (0/1; None:
        all); return every path now kept."""
        if batch.dim() != 2 or batch.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"RecentPaths.add: expected embeddings [P, {self.embeddings.shape[1]}], "
                             f"got {tuple(batch.shape)}")
        S = self.trainable.shape[1]
        mask = torch.ones(len(batch), S, dtype=torch.bool) if trainable is None else trainable.bool().cpu()
        if mask.shape != (len(batch), S):
            raise ValueError(f"RecentPaths.add: expected trainable [{len(batch)}, {S}], got {tuple(mask.shape)}")
        keep = max(self.size, len(batch))
        self.embeddings = torch.cat([self.embeddings.to(batch), batch.detach()])[-keep:].clone()
        self.trainable = torch.cat([self.trainable, mask])[-keep:].clone()
        return self.embeddings

    def rate(self, p_on: torch.Tensor) -> torch.Tensor:
        """Each student's rate [S] from the current router's P(on) [n, S] over the kept paths: the mean
        over the paths the data lets it train on (data.drop_cut_wrong keeps the rest from it whatever
        the router says, so they are no part of what it decides), over all where it may train on none."""
        rate, n = trainable_mean(p_on, self.trainable)
        return torch.where(n > 0, rate, p_on.mean(dim=0))

    def state_dict(self) -> dict:
        return {"embeddings": self.embeddings.clone(), "trainable": self.trainable.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.embeddings = state["embeddings"].clone()
        # a checkpoint written before the mask was kept: its paths count as trainable by all
        self.trainable = (state["trainable"].clone() if "trainable" in state
                          else torch.ones(len(self.embeddings), self.trainable.shape[1], dtype=torch.bool))
