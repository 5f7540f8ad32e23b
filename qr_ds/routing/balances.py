"""The balance term lambda1 weights (eq. 9's L_entropy): a registry, so a new form is one function and
one entry (``router.entropy`` takes its allowed values from ``BALANCES``). Each form keeps every
student in use; they differ in what else they pin (docs/method.md, "Balance forms")."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from qr_ds.routing.losses import balance_entropy, binary_entropy, load_entropy, rate_kl, range_kl


@dataclass
class BalanceInputs:
    p_on: torch.Tensor  # [P, S] noise-free P(on) of this batch, with grad
    alpha: torch.Tensor  # [P, S] straight-through hard routing, with grad
    question_index: torch.Tensor  # [P]
    recent_rate: torch.Tensor | None  # [S] the current router's mean P(on) over the recent paths
    cfg: object  # RouterConfig: the form's own settings (rate_target, rate_min, ...)
    trainable: torch.Tensor | None = None  # [P, S] 0/1: the pairs the data lets train (None: all)


@dataclass(frozen=True)
class Balance:
    fn: Callable[[BalanceInputs], tuple[torch.Tensor, dict[str, float]]]  # -> (term to minimise, stats)
    needs_recent_rate: bool  # the policy re-scores its recent paths each batch (routing/recent_paths.py)
    help: str


BALANCES: dict[str, Balance] = {}


def register_balance(name: str, help: str, needs_recent_rate: bool = False):
    def add(fn):
        BALANCES[name] = Balance(fn, needs_recent_rate, help)
        return fn
    return add


def _recent_stats(recent: torch.Tensor) -> dict[str, float]:
    # eq. 4 of the recent rate averaged over students: eq. 3-4's quantity over many batches
    return {"entropy": binary_entropy(recent.mean()).item(),
            **{f"recent_rate/{s}": r for s, r in enumerate(recent.tolist())}}


@register_balance("range", needs_recent_rate=True, help=(
    "no penalty while each student's recent rate lies in [rate_min, rate_max], a binary KL back to the "
    "nearer bound outside it: the signal decides how much data a student takes, the bounds stop all-off "
    "and a starved student"))
def range_balance(x: BalanceInputs):
    term = range_kl(x.p_on, x.recent_rate, x.cfg.rate_min, x.cfg.rate_max, x.trainable)
    return term, {"range_kl": term.item(), **_recent_stats(x.recent_rate)}


@register_balance("rate", needs_recent_rate=True, help=(
    "hold each student's recent rate at rate_target by a binary KL (the previous default: the target, "
    "not the signal, decides how much data each student gets)"))
def rate_balance(x: BalanceInputs):
    term = rate_kl(x.p_on, x.recent_rate, x.cfg.rate_target, x.trainable)
    return term, {"rate_kl": term.item(), **_recent_stats(x.recent_rate)}


# The paper maximises the entropy yet writes +lambda1*L_entropy in the minimised eq. 9; minimising -H is
# the reading that matches its stated intent.
@register_balance("load", help=(
    "entropy of the students' shares of this batch's expected routing (drifts to all-on once the "
    "students' gap is small, docs/method.md)"))
def load_balance(x: BalanceInputs):
    h = load_entropy(x.p_on)
    return -h, {"entropy": h.item()}


@register_balance("paper", help="eq. 3-4 literally, on the hard samples per question")
def paper_balance(x: BalanceInputs):
    h = balance_entropy(x.alpha, x.question_index)
    return -h, {"entropy": h.item()}
