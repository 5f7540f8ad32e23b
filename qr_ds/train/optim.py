"""A student's optimizer and learning-rate schedule, from the config keys ``optimizer``,
``lr_schedule``, ``warmup_steps`` and ``min_lr_ratio``."""
from __future__ import annotations

import math

import torch


def build_optimizer(groups: list[dict], name: str) -> torch.optim.Optimizer:
    if name == "adamw8bit":  # the paper's code: bitsandbytes' 8-bit Adam states, a quarter of AdamW's memory
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups)
    # torch AdamW rather than DeepSpeed's FusedAdam: no JIT build (which fails on TORCH_CUDA_ARCH_LIST=9.0a).
    return torch.optim.AdamW(groups, fused=torch.cuda.is_available())


def lr_factor(kind: str, warmup: int, total: int, min_ratio: float):
    """Linear warmup over ``warmup`` steps, then constant, linear or cosine decay to ``min_ratio``."""
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant" or total <= warmup:
            return 1.0
        done = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "cosine":
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * done))
        return max(min_ratio, 1.0 - (1 - min_ratio) * done)
    return f


def build_schedule(opt: torch.optim.Optimizer, kind: str, warmup: int, total: int, min_ratio: float):
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(kind, warmup, total, min_ratio))
