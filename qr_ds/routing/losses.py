"""The balance quantities (rate and range KL, the load entropy, eq. 3-4 literally) that the balance
forms of routing/balances.py are built from."""
from __future__ import annotations

import math

import torch

_EPS = 1e-6


def _clamp_keep_grad(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    # Forward value clamped (log 0 is undefined), gradient as if unclamped: a plain clamp would
    # zero the push-back exactly when routing is all-on or all-off.
    return x + (x.clamp(lo, hi) - x).detach()


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


def _rate_valued_recent(name: str, p_on: torch.Tensor, recent_rate: torch.Tensor,
                        trainable: torch.Tensor | None = None) -> torch.Tensor:
    """Each student's rate [S]: the value of ``recent_rate`` (many recent paths), the gradient of this
    batch's mean P(on) [P, S] over the pairs ``trainable`` [P, S] (0/1; None: all) lets train, clamped
    off 0 and 1 with the gradient kept."""
    if p_on.dim() != 2 or recent_rate.shape != p_on.shape[1:]:
        raise ValueError(f"{name}: p_on must be [P, S] and recent_rate [S], got {tuple(p_on.shape)} "
                         f"and {tuple(recent_rate.shape)}")
    # a pair the data keeps out is no part of the rate: no push on it, none diluted by it
    batch_rate = p_on.mean(dim=0) if trainable is None else trainable_mean(p_on, trainable)[0]
    return _clamp_keep_grad(recent_rate.detach().to(batch_rate) + (batch_rate - batch_rate.detach()), _EPS, 1 - _EPS)


def trainable_mean(p_on: torch.Tensor, trainable: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each student's mean P(on) [S] over the pairs ``trainable`` [n, S] lets it train on (0 where it
    may train on none), and how many there are [S]."""
    t = trainable.to(p_on.device, p_on.dtype)
    n = t.sum(dim=0)
    return (p_on * t).sum(dim=0) / n.clamp(min=1), n


def _binary_kl(target: float, rate: torch.Tensor) -> torch.Tensor:
    """KL(Bernoulli(target) || Bernoulli(rate)), 0 log 0 = 0 at target 0 or 1."""
    out = torch.zeros_like(rate)
    if target > 0:
        out = out + target * (math.log(target) - rate.log())
    if target < 1:
        out = out + (1 - target) * (math.log(1 - target) - (1 - rate).log())
    return out


def rate_kl(p_on: torch.Tensor, recent_rate: torch.Tensor, target: float,
            trainable: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over students of the binary KL(target || rate), rate = each student's expected share of paths.

    The value is ``recent_rate`` [S], taken over many recent paths: a single batch's rate follows
    which styles landed in it, and penalising that would pull every path of the batch towards
    ``target``. The gradient goes through this batch's mean P(on) [P, S], as if it were that rate:
    d/d P(on)[p, s] = (rate_s - target) / (rate_s (1 - rate_s)) / P, the same for every path of a
    student, so it sets how many paths a student takes and leaves which ones to the signal, which
    is centred per student and so says nothing about how many.
    """
    return _binary_kl(target, _rate_valued_recent("rate_kl", p_on, recent_rate, trainable)).sum()


def range_kl(p_on: torch.Tensor, recent_rate: torch.Tensor, lo: float, hi: float,
             trainable: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over students of the binary KL back to the nearer of [lo, hi] when the rate is outside it;
    0 inside. Value and gradient path as ``rate_kl``."""
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"range_kl: need 0 <= lo <= hi <= 1, got lo={lo}, hi={hi}")
    rate = _rate_valued_recent("range_kl", p_on, recent_rate, trainable)
    below = (rate < lo).to(rate) * _binary_kl(lo, rate)
    above = (rate > hi).to(rate) * _binary_kl(hi, rate)
    return (below + above).sum()


def binary_entropy(rate: torch.Tensor) -> torch.Tensor:
    rate = rate.clamp(_EPS, 1 - _EPS)
    return -(rate * rate.log() + (1 - rate) * (1 - rate).log())
