"""Router losses: the routing signal, the balance terms (the rate form we default to, the load
entropy, eq. 3-4 literally) and the straight-through routing objective (eq. 9's router part)."""
from __future__ import annotations

import math

import torch

from qr_ds.routing.gumbel import route_probs

_EPS = 1e-6


def _clamp_keep_grad(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    # Forward value clamped (log 0 is undefined), gradient as if unclamped: a plain clamp would
    # zero the push-back exactly when routing is all-on or all-off.
    return x + (x.clamp(lo, hi) - x).detach()


def routing_signal(path_losses: torch.Tensor, mode: str) -> torch.Tensor:
    """What the router minimises per (path, student), from detached per-path losses [P, S] (NaN = unknown).

    ``relative`` removes each path's mean over students (its difficulty, shared by all) and each
    student's mean over the batch (its overall level), leaving the interaction: how much better
    this student does on this path than usual. Raw losses are positive everywhere, so eq. 9 read
    literally pushes every path away from every student; a student-centred signal still routes a
    path every student finds easy to all of them and a hard one to none.
    """
    if mode == "raw":
        return path_losses
    if mode != "relative":
        raise ValueError(f"routing_signal: mode must be 'relative' or 'raw', got {mode!r}")
    x = path_losses - path_losses.nanmean(dim=1, keepdim=True)
    return x - x.nanmean(dim=0, keepdim=True)


def load_entropy(p_on: torch.Tensor) -> torch.Tensor:
    """Entropy of the students' shares of the expected routing, / log S (1 = every student equal).

    Taken on the noise-free probabilities (the expectation of the hard samples), it is smooth and
    zero-gradient at balance, so a path may go wholly to the student it suits; a student whose
    share falls is pulled back up, so none starves.
    """
    if p_on.dim() != 2 or p_on.shape[1] < 2:
        raise ValueError(f"load_entropy: p_on must be [P, S>=2], got {tuple(p_on.shape)}")
    share = _clamp_keep_grad(p_on.sum(dim=0) / p_on.sum().clamp(min=_EPS), _EPS, 1.0)
    return -(share * share.log()).sum() / math.log(p_on.shape[1])


def balance_entropy(alpha: torch.Tensor, question_index: torch.Tensor) -> torch.Tensor:
    """eq. 3-4 literally: mean over questions of H(abar_q), abar_q = mean of the hard alpha over q's
    paths in the batch and over all students. With one path of a question in a batch abar is 0 or
    1, its entropy 0, and only the clamp's gradient (about log((1-eps)/eps)/S) is left."""
    if alpha.dim() != 2 or question_index.shape != alpha.shape[:1]:
        raise ValueError(
            f"balance_entropy: alpha must be [P, S] and question_index [P], got {tuple(alpha.shape)} "
            f"and {tuple(question_index.shape)}"
        )
    _, inverse = torch.unique(question_index, return_inverse=True)
    n_q = int(inverse.max()) + 1 if inverse.numel() else 0
    per_path = alpha.mean(dim=1)
    sums = per_path.new_zeros(n_q).index_add(0, inverse, per_path)
    counts = per_path.new_zeros(n_q).index_add(0, inverse, torch.ones_like(per_path))
    abar = _clamp_keep_grad(sums / counts, _EPS, 1 - _EPS)
    return -(abar * abar.log() + (1 - abar) * (1 - abar).log()).mean()


def rate_kl(p_on: torch.Tensor, recent_rate: torch.Tensor, target: float) -> torch.Tensor:
    """Sum over students of the binary KL(target || rate), rate = each student's expected share of paths.

    The value is ``recent_rate`` [S], taken over many recent paths: a single batch's rate follows
    which styles landed in it, and penalising that would pull every path of the batch towards
    ``target``. The gradient goes through this batch's mean P(on) [P, S], as if it were that rate:
    d/d P(on)[p, s] = (rate_s - target) / (rate_s (1 - rate_s)) / P, the same for every path of a
    student, so it sets how many paths a student takes and leaves which ones to the signal, which
    is centred per student and so says nothing about how many.
    """
    if p_on.dim() != 2 or recent_rate.shape != p_on.shape[1:]:
        raise ValueError(f"rate_kl: p_on must be [P, S] and recent_rate [S], got {tuple(p_on.shape)} "
                         f"and {tuple(recent_rate.shape)}")
    batch_rate = p_on.mean(dim=0)
    rate = recent_rate.detach().to(batch_rate) + (batch_rate - batch_rate.detach())
    rate = _clamp_keep_grad(rate, _EPS, 1 - _EPS)
    return (target * math.log(target) - target * rate.log()
            + (1 - target) * math.log(1 - target) - (1 - target) * (1 - rate).log()).sum()


def binary_entropy(rate: torch.Tensor) -> torch.Tensor:
    rate = rate.clamp(_EPS, 1 - _EPS)
    return -(rate * rate.log() + (1 - rate) * (1 - rate).log())


def router_objective(
    alpha: torch.Tensor,
    logits: torch.Tensor,
    path_losses: torch.Tensor,
    question_index: torch.Tensor,
    lambda1: float,
    signal: str,
    entropy: str,
    recent_rate: torch.Tensor | None = None,
    rate_target: float = 0.5,
) -> tuple[torch.Tensor, dict[str, float]]:
    """sum_{p,s known} alpha * signal / P + lambda1 * balance.

    ``alpha`` [P, S] is the straight-through routing, so d/d soft_on[p, s] = signal[p, s] / P: a
    student doing better than usual on a path pulls it in. ``path_losses`` are detached per-path
    losses of every student (NaN = unknown, no signal). ``recent_rate`` [S], each student's rate
    over the recent paths, is needed by ``entropy="rate"``.
    """
    if path_losses.shape != alpha.shape or logits.shape[:2] != alpha.shape:
        raise ValueError(f"router_objective: path_losses {tuple(path_losses.shape)} and logits "
                         f"{tuple(logits.shape)} must match alpha {tuple(alpha.shape)}")
    sig = routing_signal(path_losses.detach().float(), signal)
    known = ~torch.isnan(sig)
    sig = torch.where(known, sig, torch.zeros_like(sig)).to(alpha.dtype)
    route_loss = (alpha * sig).sum() / max(alpha.shape[0], 1)
    stats = {"route_loss": route_loss.item(), "known_frac": known.float().mean().item()}
    if entropy == "rate":
        if recent_rate is None:
            raise ValueError("router_objective: entropy='rate' needs recent_rate, each student's rate [S]")
        balance = rate_kl(route_probs(logits), recent_rate, rate_target)
        # eq. 4 of the recent rate averaged over students: eq. 3-4's quantity over many batches
        stats.update(rate_kl=balance.item(), entropy=binary_entropy(recent_rate.mean()).item())
        stats.update({f"recent_rate/{s}": r for s, r in enumerate(recent_rate.tolist())})
    elif entropy in ("load", "paper"):
        # The paper maximises the entropy yet writes +lambda1*L_entropy in the minimised eq. 9;
        # minimising -H is the reading that matches its stated intent.
        h = load_entropy(route_probs(logits)) if entropy == "load" else balance_entropy(alpha, question_index)
        balance = -h
        stats["entropy"] = h.item()
    else:
        raise ValueError(f"router_objective: entropy must be 'rate', 'load' or 'paper', got {entropy!r}")
    loss = route_loss + lambda1 * balance
    stats.update({f"rate/{s}": r for s, r in enumerate(alpha.detach().mean(dim=0).tolist())})
    return loss, stats
