"""Router losses: the balance entropy of eq. 3-4 and the straight-through routing objective."""
from __future__ import annotations

import torch

_EPS = 1e-6


def _clamp_keep_grad(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    # Forward value clamped (log 0 is undefined), gradient as if unclamped: a plain clamp would
    # zero the push-back exactly when routing is all-on or all-off, the case the entropy exists for.
    return x + (x.clamp(lo, hi) - x).detach()


def balance_entropy(alpha: torch.Tensor, question_index: torch.Tensor, per_student: bool = False) -> torch.Tensor:
    """Mean over questions of H(abar_q), abar_q = mean of alpha over q's paths and all students (eq. 3-4).

    eq. 3 pools the students, so it only stops all-on/all-off routing: one student taking every
    path scores as well as an even split. ``per_student`` takes H of each student's own rate per
    question instead (mean over questions and students), which also keeps every student in use.
    """
    if alpha.dim() != 2 or question_index.shape != alpha.shape[:1]:
        raise ValueError(
            f"balance_entropy: alpha must be [P, S] and question_index [P], got {tuple(alpha.shape)} "
            f"and {tuple(question_index.shape)}"
        )
    _, inverse = torch.unique(question_index, return_inverse=True)
    n_q = int(inverse.max()) + 1 if inverse.numel() else 0
    per_path = alpha if per_student else alpha.mean(dim=1, keepdim=True)
    sums = per_path.new_zeros(n_q, per_path.shape[1]).index_add(0, inverse, per_path)
    counts = per_path.new_zeros(n_q).index_add(0, inverse, torch.ones_like(per_path[:, 0]))
    abar = _clamp_keep_grad(sums / counts[:, None], _EPS, 1 - _EPS)
    h = -(abar * abar.log() + (1 - abar) * (1 - abar).log())
    return h.mean()


def router_objective(
    alpha: torch.Tensor,
    path_losses: torch.Tensor,
    question_index: torch.Tensor,
    lambda1: float,
    n_paths: int | None = None,
    per_student: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """sum_{p,s known} alpha*path_loss / P - lambda1 * H.

    ``path_losses`` [P, S] are detached per-path SFT losses of every student (NaN = unknown).
    Through the straight-through estimator d loss / d soft_on[p, s] = path_losses[p, s] / P, so
    a student that does badly on a path pushes that path away from it. ``n_paths`` overrides P
    when the batch is sharded and shard objectives are summed; ``per_student`` is passed to
    balance_entropy.
    """
    if path_losses.shape != alpha.shape:
        raise ValueError(f"router_objective: path_losses {tuple(path_losses.shape)} != alpha {tuple(alpha.shape)}")
    denom = n_paths if n_paths is not None else alpha.shape[0]
    known = ~torch.isnan(path_losses)
    losses = torch.where(known, path_losses.detach().to(alpha.dtype), torch.zeros_like(alpha))
    route_loss = (alpha * losses).sum() / max(denom, 1)
    entropy = balance_entropy(alpha, question_index, per_student)
    # The paper maximizes the entropy (to penalize extreme routing) yet writes +lambda1*L_entropy in
    # the minimized eq. 9; minimizing -H is the reading that matches its stated intent.
    loss = route_loss - lambda1 * entropy
    a = alpha.detach()
    stats = {"route_loss": route_loss.item(), "entropy": entropy.item(), "known_frac": known.float().mean().item()}
    stats.update({f"rate/{s}": r for s, r in enumerate(a.mean(dim=0).tolist())})
    return loss, stats
