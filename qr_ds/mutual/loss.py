"""Mutual-student distillation on co-routed paths (eq. 5-8), in two readings.

``paper``: z_ens = sum_s gamma_s z_s with gamma = softmax of the competence logits, and every routed
student pays mean_m ||z_s - z_ens||^2, all live. Two flaws follow from the algebra: the loss scales
with ||z||^2, so a trainable projection wins by shrinking z; and for any z the sum of squared
distances to a convex combination is smallest at the plain mean, so gamma is pulled to uniform and
never learns competence.

``anchored`` (default): each student's span states are centred over its spans in the chunk and
unit-normalised, so neither scale nor a constant offset can lower the loss; students are pulled to a
detached ensemble (as the reference code does); and the competence weights learn from evidence,
a cross-entropy towards softmax(-nats) over the co-routed students, where nats is each student's
total SFT loss on the path (the log-likelihood of the same text, so comparable across tokenizers).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F


def competence_weights(logits: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """gamma [S, P]: softmax of the competence logits over the students in ``weight`` (eq. 7)."""
    masked = torch.where(weight, logits.float(), float("-inf"))
    return torch.softmax(torch.where(weight.any(0)[None], masked, 0.0), dim=0)


def _scale_free(z: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Centre each student's span states over its valid spans, then unit-normalise each vector."""
    v = valid[..., None].to(z.dtype)
    mean = (z * v).sum(dim=(1, 2)) / v.sum(dim=(1, 2)).clamp(min=1)
    return F.normalize(z - mean[:, None, None], dim=-1)


def mutual_loss(
    z: torch.Tensor,
    logits: torch.Tensor,
    routed: torch.Tensor,
    span_mask: torch.Tensor,
    n_paths: int,
    form: str = "anchored",
    path_nats: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum over co-routed paths p and routed students s of mean_m ||z_s[p,m] - z_ens[p,m]||^2, / n_paths
    (plus, anchored, the competence cross-entropy per co-routed path, / n_paths).

    z [S, P, M, D] projected span states; logits [S, P] competence logits; routed [S, P] bool;
    span_mask [P, M] bool; path_nats [S, P] each student's total SFT loss per path (anchored only).
    Only paths routed to >= 2 students count; dividing by the global batch size makes shard
    losses add up to the batch loss.
    """
    S, P, M, _ = z.shape
    if logits.shape != (S, P) or routed.shape != (S, P) or span_mask.shape != (P, M):
        raise ValueError(
            f"mutual_loss: z {tuple(z.shape)} needs logits/routed [S={S}, P={P}] and span_mask [P, M={M}], "
            f"got {tuple(logits.shape)}, {tuple(routed.shape)}, {tuple(span_mask.shape)}"
        )
    if n_paths < 1:
        raise ValueError(f"mutual_loss: n_paths must be >= 1, got {n_paths}")
    if form not in ("anchored", "paper"):
        raise ValueError(f"mutual_loss: form must be 'anchored' or 'paper', got {form!r}")
    if form == "anchored" and (path_nats is None or path_nats.shape != (S, P)):
        raise ValueError(f"mutual_loss: the anchored form needs path_nats [S={S}, P={P}], got "
                         f"{None if path_nats is None else tuple(path_nats.shape)}")
    routed = routed.bool()
    weight = routed & (routed.sum(dim=0) >= 2)[None]  # [S, P]: the (student, path) terms of eq. 8
    z = torch.where(weight[..., None, None], z.float(), 0.0)  # other students' states never enter
    gamma = competence_weights(logits, weight)
    if form == "anchored":
        z = _scale_free(z, weight[..., None] & span_mask[None])
        target = (gamma.detach()[..., None, None] * z.detach() * weight[..., None, None]).sum(dim=0)
    else:
        target = (gamma[..., None, None] * z).sum(dim=0)
    dist = (z - target[None]).pow(2).sum(dim=-1)  # [S, P, M]
    mask = span_mask.to(dist.dtype)
    per = (dist * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)  # [S, P]
    loss = (per * weight).sum() / n_paths
    if form == "anchored":
        evidence = competence_weights(-path_nats.detach(), weight)  # which student explains the path better
        ce = -(evidence * torch.log(gamma.clamp(min=1e-12)) * weight).sum()
        loss = loss + ce / n_paths
    return loss


@dataclass(frozen=True)
class MutualInputs:
    """mutual_loss's arguments over some paths, every student's slice: what the exchange gathers per
    chunk, and the one argument each student's term takes besides its own live slice."""

    z: torch.Tensor  # [S, P, M, D] projected span states
    logits: torch.Tensor  # [S, P] competence logits
    routed: torch.Tensor  # [S, P] bool
    span_mask: torch.Tensor  # [P, M] bool
    n_paths: int  # the global batch size
    form: str = "anchored"
    path_nats: torch.Tensor | None = None  # [S, P] each student's total SFT loss per path (anchored only)

    def loss(self) -> torch.Tensor:
        return mutual_loss(**vars(self))


def mutual_loss_for_student(s: int, own_z: torch.Tensor, own_logit: torch.Tensor,
                            gathered: MutualInputs) -> torch.Tensor:
    """The full mutual loss with student s's slice live and every other slice detached.

    Why this is exact: the joint loss is one function of all students' (z, logit) inputs; its
    partial derivative wrt x_s at the gathered values is the same whether the other x_t are
    variables or constants. Students' parameters are disjoint, so each student's engine can
    all-gather everyone's (z, logit), call this with its own live tensors, and backprop on its own:
    the sum of these backward passes equals one backward of the joint loss. The returned value is
    the whole loss (the same on every student), so log it once, not summed over students.
    """
    all_z, all_logits = gathered.z, gathered.logits
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
    return replace(gathered, z=z, logits=logits).loss()
