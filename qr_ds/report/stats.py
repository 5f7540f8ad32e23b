"""Paired comparisons of two models on the same test questions.

Two accuracies measured on the same questions are correlated: intervals computed per model and
checked for overlap ignore that and miss real differences. McNemar's exact test looks only at the
questions where the two disagree; the paired bootstrap resamples questions, keeping each pair.
"""
from __future__ import annotations

from math import comb

import numpy as np


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact p-value: under H0 each discordant question is a fair coin flip between
    "only A right" and "only B right" (binomial, n = discordant pairs, p = 1/2)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_bootstrap_ci(a: list[bool], b: list[bool], n_boot: int = 10_000, level: float = 0.95,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile interval of accuracy(A) - accuracy(B), resampling questions (pairs kept together)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired bootstrap: need two equally long non-empty lists, got {len(a)} and {len(b)}")
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_comparison(a: dict[str, bool], b: dict[str, bool], alpha: float = 0.05) -> dict | None:
    """A vs B over the questions both answered (question key -> correct); None when they share none."""
    keys = sorted(a.keys() & b.keys())
    if not keys:
        return None
    xa, xb = [a[k] for k in keys], [b[k] for k in keys]
    only_a = sum(x and not y for x, y in zip(xa, xb))
    only_b = sum(y and not x for x, y in zip(xa, xb))
    p = mcnemar_exact(only_a, only_b)
    lo, hi = paired_bootstrap_ci(xa, xb)
    return {"n": len(keys), "a_accuracy": sum(xa) / len(keys), "b_accuracy": sum(xb) / len(keys),
            "difference": (sum(xa) - sum(xb)) / len(keys), "only_a_correct": only_a, "only_b_correct": only_b,
            "mcnemar_p": p, "bootstrap_ci95": [lo, hi], "significant": p < alpha}
