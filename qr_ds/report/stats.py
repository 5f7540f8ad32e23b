"""Comparisons of two methods' accuracy on the same test questions, each method trained with several seeds.

Two noise sources separate a measured difference from the method's effect: which training seed ran
(between seeds the demo's tiny students vary by up to 0.16 in accuracy) and which test questions
were asked. A test over one run's questions (McNemar) sees only the second, so between two seeds of
the very same method it finds "differences" far more often than alpha (tests/test_protocol_stats.py).
``compare_groups`` covers both: a hierarchical bootstrap resamples each method's seeds, then the
questions (the same ones for both methods), and its spread is the standard error of the difference.

Arrays of correctness are shaped (..., seeds, questions); leading axes are independent data sets,
so the planted-data test runs hundreds of simulated studies in one call.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

N_BOOT = 10_000
SEEDS_AND_QUESTIONS, QUESTIONS_ONLY = "seeds and questions", "questions only"


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact p-value: under H0 each discordant question is a fair coin flip between
    "only A right" and "only B right" (binomial, n = discordant pairs, p = 1/2). Shown only for one
    run per method, labelled questions only. scipy's binomtest matches the exact rational sum to
    3e-14 relative up to n = 300 (tests/test_libraries.py) and stays near 1 ms at n = 20 000, where
    summing binomial coefficients took 21 s."""
    n = only_a + only_b
    return 1.0 if n == 0 else float(stats.binomtest(only_a, n, 0.5).pvalue)


def hierarchical_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """Replicates of accuracy(A) - accuracy(B), shaped (..., n_boot). Each replicate draws A's seeds
    and B's seeds with replacement, independently (a seed number does not pair two methods: their
    pools, routing and hence data order differ), then one draw of the questions used for both (the
    same questions were asked of both, so their difficulty cancels in the difference)."""
    if a.shape[-1] != b.shape[-1] or a.shape[-1] == 0:
        raise ValueError(f"bootstrap: both methods need the same non-empty questions, got {a.shape[-1]} "
                         f"and {b.shape[-1]}")
    rng = np.random.default_rng(seed)
    q = a.shape[-1]
    questions = rng.multinomial(q, np.full(q, 1 / q), size=n_boot).astype(float)  # (n_boot, q) draw counts

    def side(x: np.ndarray) -> np.ndarray:
        n = x.shape[-2]
        seeds = rng.multinomial(n, np.full(n, 1 / n), size=n_boot).astype(float)  # (n_boot, n)
        # (..., n, n_boot): correct answers in each question draw; one flat product (a batched one is 10x slower)
        per_seed = (x.reshape(-1, q).astype(float) @ questions.T).reshape(*x.shape[:-1], n_boot)
        return (per_seed * seeds.T).sum(-2) / (n * q)

    return side(a) - side(b)


def welch_df(a_acc: np.ndarray, b_acc: np.ndarray) -> np.ndarray:
    """Welch-Satterthwaite degrees of freedom from per-seed accuracies (..., seeds); with no spread
    at all, the pooled n_a + n_b - 2."""
    na, nb = a_acc.shape[-1], b_acc.shape[-1]
    va, vb = a_acc.var(-1, ddof=1) / na, b_acc.var(-1, ddof=1) / nb
    with np.errstate(invalid="ignore", divide="ignore"):
        df = (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
    return np.where(np.isfinite(df), df, na + nb - 2)


def compare_groups(a: np.ndarray, b: np.ndarray, alpha: float = 0.05, n_boot: int = N_BOOT,
                   seed: int = 0) -> dict[str, np.ndarray | str]:
    """accuracy(A) - accuracy(B), its (1 - alpha) interval and two-sided p, from 0/1 correctness
    (..., seeds, questions) of A and of B on the same questions.

    Both with >= 2 seeds ("seeds and questions"): estimate +- t(df) * SE, SE the hierarchical
    bootstrap's standard deviation, df Welch's from the per-seed accuracies. The t rather than the
    bootstrap's percentiles: with 3-5 seeds a resampled mean takes few distinct values and the
    percentile interval is too narrow (0.13 false positives at 3 seeds in the planted-data simulation).
    Otherwise ("questions only"): percentile interval and p of the same bootstrap; it cannot see
    training noise."""
    diff = a.mean((-2, -1)) - b.mean((-2, -1))
    boot = hierarchical_bootstrap(a, b, n_boot, seed)
    if min(a.shape[-2], b.shape[-2]) >= 2:
        se = boot.std(-1, ddof=1)
        df = welch_df(a.mean(-1), b.mean(-1))
        half = stats.t.ppf(1 - alpha / 2, df) * se
        with np.errstate(invalid="ignore", divide="ignore"):
            p = np.where(se > 0, 2 * stats.t.sf(np.abs(diff) / se, df), np.where(diff == 0, 1.0, 0.0))
        return {"difference": diff, "ci": np.stack([diff - half, diff + half], -1), "p": p, "se": se,
                "df": df, "noise": SEEDS_AND_QUESTIONS}
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2], axis=-1)
    p = np.minimum(1.0, 2 * np.minimum((boot <= 0).mean(-1), (boot >= 0).mean(-1)))
    return {"difference": diff, "ci": np.stack([lo, hi], -1), "p": p, "se": boot.std(-1, ddof=1),
            "df": None, "noise": QUESTIONS_ONLY}

