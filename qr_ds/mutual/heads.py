"""Per-student mutual-distillation head: Proj_s (eq. 5) and the competence regressor w_s (eq. 6)."""
from __future__ import annotations

import torch
from torch import nn


class MutualHead(nn.Module):
    def __init__(self, hidden_size: int, shared_dim: int, detach_competence: bool = True):
        super().__init__()
        if hidden_size < 1 or shared_dim < 1:
            raise ValueError(f"MutualHead: hidden_size and shared_dim must be >= 1, got {hidden_size}, {shared_dim}")
        self.proj = nn.Linear(hidden_size, shared_dim)
        # eq. 6 has no bias; with one, a student's overall competence need not live in z's mean.
        self.competence = nn.Linear(shared_dim, 1)
        # Anchored form: the competence score learns from evidence alone; through a live z it would
        # inflate the projection to sharpen gamma. Eq. 6-8 (paper form) trains both through z.
        self.detach_competence = detach_competence

    def forward(self, pooled: torch.Tensor, span_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pooled [P, M, H] span means of last hidden states -> (z [P, M, D], competence logit [P]).

        The paper averages projected states over tokens; we average over aligned spans, the unit
        every student shares, so all students' logits describe the same text.
        """
        if pooled.dim() != 3 or span_mask.shape != pooled.shape[:2]:
            raise ValueError(
                f"MutualHead: pooled must be [P, M, H] and span_mask [P, M], got {tuple(pooled.shape)} "
                f"and {tuple(span_mask.shape)}"
            )
        z = self.proj(pooled.to(self.proj.weight.dtype))
        mask = span_mask.to(z.dtype).unsqueeze(-1)
        mean = (z * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return z, self.competence(mean.detach() if self.detach_competence else mean).squeeze(-1)
