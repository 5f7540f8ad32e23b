"""The mutual exchange of one micro-step (eq. 5-8 across ranks): per chunk, every local student's
projected span states, competence logits and path nats are packed into one tensor and all-gathered
in the chunk's cross-student group; each student then adds lambda2 * dp_size * L_mutual, its own
slice live and its peers' detached, to its loss (the dp_size undoes the average over its
data-parallel ranks, as for the SFT weights)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from qr_ds.distributed.strategy import Strategy
from qr_ds.mutual.config import MutualConfig
from qr_ds.mutual.loss import MutualInputs, mutual_loss_for_student


@dataclass
class Share:
    """What one local student brings to the exchange: per path of its chunks, in batch order."""

    z: torch.Tensor  # [rows, M, D] projected span states
    logit: torch.Tensor  # [rows] competence logits
    nats: torch.Tensor  # [rows] -log p(whole path): the competence evidence
    chunks: list[int]

    @classmethod
    def scatter(cls, z: torch.Tensor, logit: torch.Tensor, nats: torch.Tensor, forwarded: torch.Tensor,
                chunks: list[int]) -> Share:
        """Full-chunk tensors: the rows the student forwarded with grad (``forwarded``, a mask) carry
        its states, the others zeros."""
        rows = torch.nonzero(forwarded).flatten().to(z.device)
        n = len(forwarded)
        return cls(z.new_zeros((n, *z.shape[1:])).index_copy(0, rows, z),
                   logit.new_zeros(n).index_copy(0, rows, logit), nats, chunks)


class MutualExchange:
    def __init__(self, cfg: MutualConfig, lambda2: float, paths_per_chunk: int, strategy: Strategy):
        self.cfg, self.lambda2, self.c, self.strategy = cfg, lambda2, paths_per_chunk, strategy
        self.layout = strategy.layout
        self.n_paths = paths_per_chunk * self.layout.n_chunks  # the global batch: shard losses add up to it
        # mutual.paths: all: every student is a party to every path's ensemble
        self.everywhere = cfg.paths == "all"
        self.bytes_received = self._bytes_received()  # per micro-step: fixed by the layout

    def acts_on(self, routed: torch.Tensor) -> bool:
        """Whether the term has a path in this batch: a co-routed one (any path with ``paths: all``)."""
        return self.everywhere or bool(((routed > 0).sum(1) > 1).any())

    def __call__(self, losses: dict[int, torch.Tensor], shares: dict[int, Share], routed: torch.Tensor,
                 span_mask: torch.Tensor, trainable: torch.Tensor) -> float:
        """Add each local student's term to its loss in ``losses``. ``routed`` [P, S] and ``span_mask``
        [P, M] cover the whole batch; ``trainable`` [P, S]: the pairs the data lets train (with
        ``paths: all`` the parties, so a student the data keeps from a path is no party to it).
        Returns the mutual loss of this rank's chunks, counted once (on student 0's ranks)."""
        c = self.c
        chunks = next(iter(shares.values())).chunks
        value = torch.zeros(())
        parties = trainable if self.everywhere else routed
        for k in chunks:
            rows, batch_rows = slice((k - chunks[0]) * c, (k - chunks[0] + 1) * c), slice(k * c, (k + 1) * c)
            flat = self.strategy.gather_chunk(k, {s: self._pack(share, rows) for s, share in shares.items()})
            gathered = self._unpack(flat, parties[batch_rows], span_mask[batch_rows])
            for s, share in shares.items():
                m = mutual_loss_for_student(s, share.z[rows].float(), share.logit[rows].float(), gathered)
                losses[s] = losses[s] + self.lambda2 * len(self.layout.student_ranks[s]) * m
            if 0 in shares:
                value += gathered.loss().detach().cpu()
        return float(value)

    @staticmethod
    def _pack(share: Share, rows: slice) -> torch.Tensor:
        return torch.cat([share.z[rows].reshape(-1).float(), share.logit[rows].float(), share.nats[rows].float()])

    def _unpack(self, flat: list[torch.Tensor], routed: torch.Tensor, span_mask: torch.Tensor) -> MutualInputs:
        c, M, D = self.c, self.cfg.max_spans, self.cfg.shared_dim
        z = torch.stack([f[: c * M * D].view(c, M, D) for f in flat])
        logits = torch.stack([f[c * M * D:c * M * D + c] for f in flat])
        nats = torch.stack([f[c * M * D + c:] for f in flat])
        routed = routed.T.bool().to(z.device)
        return MutualInputs(z, logits, routed, span_mask.to(z.device), self.n_paths, self.cfg.form, nats)

    def _bytes_received(self) -> int:
        """Bytes this rank receives per micro-step in the all-gathers (float32): none where students share ranks."""
        if self.layout.placement.students_share_ranks:
            return 0
        c, M, D = self.c, self.cfg.max_spans, self.cfg.shared_dim
        chunks = self.layout.chunks_of(self.strategy.local_students[0], self.strategy.rank)
        return len(chunks) * (self.layout.n_students - 1) * (c * M * D + 2 * c) * 4
