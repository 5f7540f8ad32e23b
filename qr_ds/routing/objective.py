"""The router's objective (eq. 9's router part): the straight-through routing times a registered signal,
plus lambda1 times a registered balance form."""
from __future__ import annotations

import torch

from qr_ds.routing.balances import Balance, BalanceInputs
from qr_ds.routing.gumbel import route_probs


def router_objective(
    alpha: torch.Tensor,
    logits: torch.Tensor,
    signal: torch.Tensor,
    question_index: torch.Tensor,
    lambda1: float,
    balance: Balance,
    recent_rate: torch.Tensor | None = None,
    cfg=None,
    trainable: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """sum_{p,s known} alpha * signal / P + lambda1 * balance.

    ``alpha`` [P, S] is the straight-through routing, so d/d soft_on[p, s] = signal[p, s] / P.
    ``signal`` [P, S] comes from a registered signal (routing/signals.py; NaN = unknown, no push);
    ``balance`` is a registered ``Balance`` (routing/balances.py), fed ``recent_rate`` [S] (each
    student's rate over the recent paths) when it needs it, ``cfg`` (its settings) and ``trainable``
    [P, S] (the pairs the data lets train; the rate forms leave the others out of a student's rate).
    """
    if signal.shape != alpha.shape or logits.shape[:2] != alpha.shape:
        raise ValueError(f"router_objective: signal {tuple(signal.shape)} and logits "
                         f"{tuple(logits.shape)} must match alpha {tuple(alpha.shape)}")
    if balance.needs_recent_rate and recent_rate is None:
        raise ValueError("router_objective: this balance needs recent_rate, each student's rate [S]")
    sig = signal.detach().float()
    known = ~torch.isnan(sig)
    sig = torch.where(known, sig, torch.zeros_like(sig)).to(alpha.dtype)
    route_loss = (alpha * sig).sum() / max(alpha.shape[0], 1)
    term, stats = balance.fn(BalanceInputs(route_probs(logits), alpha, question_index, recent_rate, cfg,
                                           trainable))
    stats.update(route_loss=route_loss.item(), known_frac=known.float().mean().item())
    stats.update({f"rate/{s}": r for s, r in enumerate(alpha.detach().mean(dim=0).tolist())})
    return route_loss + lambda1 * term, stats
