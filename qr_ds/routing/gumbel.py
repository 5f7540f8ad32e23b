"""Straight-through Gumbel-softmax routing (eq. 2): hard 0/1 assignments with soft gradients."""
from __future__ import annotations

import torch

ON = 1  # index of the "on" logit in the last dim


def _check(logits: torch.Tensor, tau: float) -> None:
    if logits.dim() != 3 or logits.shape[-1] != 2:
        raise ValueError(f"routing logits must be [P, S, 2], got {tuple(logits.shape)}")
    if not tau > 0:
        raise ValueError(f"Gumbel temperature tau must be > 0, got {tau}")


def gumbel_noise(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Gumbel(0, 1) noise drawn from ``generator`` on its own device, so its saved state replays exactly."""
    gen_device = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, device=gen_device, dtype=torch.float32)
    u = u.clamp(torch.finfo(torch.float32).tiny, 1.0 - torch.finfo(torch.float32).eps)
    return (-torch.log(-torch.log(u))).to(device)


def route_probs(logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Noise-free probability that each student gets each path, [P, S].

    The hard decision is the Gumbel-max of the two logits, so its probability is the sigmoid of
    their difference whatever tau is; tau only shapes the straight-through gradient.
    """
    _check(logits, tau)
    return torch.sigmoid(logits[..., ON].float() - logits[..., 1 - ON].float())


def straight_through_route(
    logits: torch.Tensor,
    tau: float,
    generator: torch.Generator | None,
    hard: bool = True,
    ensure_one: bool = True,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """alpha [P, S]: 1 where "on" wins after Gumbel noise; backward is d(soft "on" prob).

    With ``ensure_one`` (hard routing only) a path no student won goes to the student with the
    highest soft "on" probability, so no teacher path is silently dropped from the batch.
    ``allowed`` [P, S] 0/1 (hard only): pairs that may be routed; the others are 0 with no gradient,
    and ``ensure_one`` picks among the allowed students (a path none may take stays with none).
    """
    _check(logits, tau)
    noise = gumbel_noise(logits.shape, generator, logits.device)
    soft = torch.softmax((logits.float() + noise) / tau, dim=-1)[..., ON]
    if not hard:
        return soft
    decision = (soft > 0.5).float()  # "on" beats "off" exactly when its two-way softmax is > 1/2
    ok = torch.ones_like(decision) if allowed is None else allowed.to(decision).clamp(0, 1)
    decision = decision * ok
    if ensure_one:
        orphan = (decision.sum(dim=1) == 0) & (ok.sum(dim=1) > 0)
        pick = soft.detach().masked_fill(ok == 0, -1.0).argmax(dim=1)
        best = torch.nn.functional.one_hot(pick, soft.shape[1]).float()
        decision = torch.where(orphan[:, None], best, decision)
    return (decision + (soft - soft.detach())) * ok  # exactly 0/1 forward; d alpha = d soft backward
