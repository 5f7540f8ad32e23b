"""Mutual-student distillation loss (eq. 6-8) on co-routed paths, and its per-student form."""
from __future__ import annotations

import torch


def mutual_loss(
    z: torch.Tensor,
    logits: torch.Tensor,
    routed: torch.Tensor,
    span_mask: torch.Tensor,
    n_paths: int,
) -> torch.Tensor:
    """sum over co-routed paths p and routed students s of mean_m ||z_s[p,m] - z_ens[p,m]||^2, / n_paths.

    z [S, P, M, D] projected span states; logits [S, P] competence logits; routed [S, P] bool;
    span_mask [P, M] bool. gamma is the softmax of the logits over the students routed to p, and
    z_ens = sum_s gamma_s z_s (eq. 7). Only paths routed to >= 2 students count; dividing by the
    global batch size ``n_paths`` makes shard losses add up to the batch loss.
    """
    S, P, M, _ = z.shape
    if logits.shape != (S, P) or routed.shape != (S, P) or span_mask.shape != (P, M):
        raise ValueError(
            f"mutual_loss: z {tuple(z.shape)} needs logits/routed [S={S}, P={P}] and span_mask [P, M={M}], "
            f"got {tuple(logits.shape)}, {tuple(routed.shape)}, {tuple(span_mask.shape)}"
        )
    if n_paths < 1:
        raise ValueError(f"mutual_loss: n_paths must be >= 1, got {n_paths}")
    routed = routed.bool()
    co = routed.sum(dim=0) >= 2  # [P]
    weight = routed & co[None]  # [S, P]: the (student, path) terms of eq. 8
    z = torch.where(weight[..., None, None], z.float(), 0.0)  # other students' states never enter
    masked = torch.where(weight, logits.float(), float("-inf"))
    gamma = torch.softmax(torch.where(co[None], masked, 0.0), dim=0)  # rows of non-co paths are unused
    z_ens = (gamma[..., None, None] * z).sum(dim=0)  # [P, M, D]
    dist = (z - z_ens[None]).pow(2).sum(dim=-1)  # [S, P, M]
    mask = span_mask.to(dist.dtype)
    per = (dist * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)  # [S, P]
    return (per * weight).sum() / n_paths


def mutual_loss_for_student(
    s: int,
    own_z: torch.Tensor,
    own_logit: torch.Tensor,
    all_z: torch.Tensor,
    all_logits: torch.Tensor,
    routed: torch.Tensor,
    span_mask: torch.Tensor,
    n_paths: int,
) -> torch.Tensor:
    """The full mutual loss with student s's slice live and every other slice detached.

    Why this is exact: the joint loss L(x_1, ..., x_S) is one function of all students' (z, logit)
    inputs; dL/dx_s at the gathered values is the same whether the other x_t are variables or
    constants, because a partial derivative only holds the others fixed. Students' parameters are
    disjoint, so the gradient of L wrt student s's parameters is dL/dx_s chained through s's own
    graph only. So each student's engine can all-gather everyone's (z, logit), call this with its
    own live tensors, and run backward on its own: the sum over students of these backward passes
    equals one backward of the joint loss. The returned value is the whole loss (the same on every
    student), so log it once, not summed over students.
    """
    S = all_z.shape[0]
    if not 0 <= s < S:
        raise ValueError(f"mutual_loss_for_student: student index {s} out of range for {S} students")
    if own_z.shape != all_z.shape[1:] or own_logit.shape != all_logits.shape[1:]:
        raise ValueError(
            f"mutual_loss_for_student: own_z {tuple(own_z.shape)} / own_logit {tuple(own_logit.shape)} "
            f"must match one slice of all_z {tuple(all_z.shape)} / all_logits {tuple(all_logits.shape)}"
        )
    z = torch.stack([own_z.float() if t == s else all_z[t].detach().float() for t in range(S)])
    logits = torch.stack([own_logit.float() if t == s else all_logits[t].detach().float() for t in range(S)])
    return mutual_loss(z, logits, routed, span_mask, n_paths)
