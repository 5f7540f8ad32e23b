"""What the router minimises per (path, student): a registry, so a new signal is one function and one
entry (``router.signal`` takes its allowed values from ``SIGNALS``).

Every signal maps ``SignalInputs`` to a [P, S] tensor, NaN where it knows nothing; the router
objective multiplies it by the straight-through routing, so a negative value pulls a path towards a
student and a positive one pushes it away (docs/method.md, "Routing signals").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class SignalInputs:
    losses: torch.Tensor  # [P, S] each student's nats per character on each path (NaN = not measured)
    gain: torch.Tensor | None = None  # [P, S] the gain critic's predicted held-out gain (signals that need it)


@dataclass(frozen=True)
class Signal:
    fn: Callable[[SignalInputs], torch.Tensor]
    needs_gain: bool  # the policy keeps a GainCritic and the trainer measures held-out loss changes
    help: str


SIGNALS: dict[str, Signal] = {}


def register_signal(name: str, help: str, needs_gain: bool = False):
    def add(fn: Callable[[SignalInputs], torch.Tensor]):
        SIGNALS[name] = Signal(fn, needs_gain, help)
        return fn
    return add


@register_signal("gain", needs_gain=True, help=(
    "minus the predicted learning gain: how much a student's loss on fresh paths fell after it trained "
    "on paths like this one (routing/gain.py), scaled by its recent size; a path that helps is pulled "
    "in, one that harms is pushed out, one with no gain left is left to the balance"))
def gain_signal(x: SignalInputs) -> torch.Tensor:
    if x.gain is None:
        raise ValueError("signal 'gain' needs the gain critic's predictions (SignalInputs.gain)")
    return -x.gain


@register_signal("relative", help=(
    "the loss minus the path's mean over students and the student's mean over the batch: which student "
    "fits which path now (the previous default; locks a split in, docs/method.md)"))
def relative_signal(x: SignalInputs) -> torch.Tensor:
    """The interaction of path and student: a path's mean over students (its difficulty, shared by
    all) and a student's mean over the batch (its overall level) removed. Raw losses are positive
    everywhere, so eq. 9 read literally pushes every path away from every student."""
    centred = x.losses - x.losses.nanmean(dim=1, keepdim=True)
    return centred - centred.nanmean(dim=0, keepdim=True)


@register_signal("raw", help="eq. 9 literally: the loss itself (pushes every path away from every student)")
def raw_signal(x: SignalInputs) -> torch.Tensor:
    return x.losses


def routing_signal(path_losses: torch.Tensor, mode: str, gain: torch.Tensor | None = None) -> torch.Tensor:
    """The registered signal ``mode`` of per-path losses [P, S] (and predicted gains, for ``gain``)."""
    if mode not in SIGNALS:
        raise ValueError(f"routing_signal: mode must be one of {', '.join(SIGNALS)}, got {mode!r}")
    return SIGNALS[mode].fn(SignalInputs(path_losses, gain))
