"""The gain critic: what training a student on a path does to that student's loss on fresh paths.

After each optimizer step the trainer measures, per student, the change in its loss (nats per
character) on the next batch's paths, forwarded once before the step and again, as that batch's own
forward, after it: fresh paths the student has not trained on, so the change is what the step taught
that carries over, good or bad. The change is credited to the paths routed to the student in that
step by least squares: paths fall into ``kinds`` (the nearest of K centroids of the pool's
embeddings, k-means), and a step's change is modelled as the sum over its routed paths of their
kinds' gains. Batches mix kinds at random, so the sums separate what each kind does, including a kind
that harms while the rest help, which a per-step share of the change cannot (every routed path would
get the step's mean).

Each kind's gain is the mean gain per path (all kinds pooled) plus a deviation fitted to what the mean
leaves, shrunk towards 0 (ridge): a kind gains what paths gain on average until steady evidence says
it differs, so a few noisy steps do not flip it.
Exponential forgetting (half-life ``log 0.5 / log forget`` steps of news about a kind) follows a
gain that fades as a student learns (saturation) or turns negative (a wrong rule learned) instead of
averaging it away; a kind no path of which reached the student in a step is not forgotten that step.

``evidence`` is each prediction over its standard error (a z-score): the noise is the forgetful mean
square of the critic's one-step-ahead errors, the errors of the pooled mean and of a kind's deviation
are the least-squares ones. Scale-free, and near 0 where the data cannot tell a kind's sign.
"""
from __future__ import annotations

import torch


def kmeans(x: torch.Tensor, k: int, seed: int, iters: int = 25, restarts: int = 4) -> torch.Tensor:
    """[k, D] centroids of the rows of ``x`` in cosine geometry: k-means++ starts and Lloyd steps, the
    best of ``restarts`` (one start can leave two centres in one cluster and one across two)."""
    x = torch.nn.functional.normalize(x.detach().float(), dim=1)
    k = min(k, len(x))
    g = torch.Generator().manual_seed(seed)
    best, best_fit = None, -float("inf")
    for _ in range(restarts):
        centres = x[torch.randint(len(x), (1,), generator=g)]
        while len(centres) < k:  # k-means++: the next centre far from those chosen
            d = (1 - x @ centres.T).clamp(min=0).min(dim=1).values
            centres = torch.cat([centres, x[torch.multinomial(d + 1e-12, 1, generator=g)]])
        for _ in range(iters):
            assign = (x @ centres.T).argmax(dim=1)
            sums = torch.zeros_like(centres).index_add(0, assign, x)
            filled = torch.bincount(assign, minlength=k) > 0
            centres = torch.where(filled[:, None], torch.nn.functional.normalize(sums, dim=1), centres)
        fit = (x @ centres.T).max(dim=1).values.sum().item()  # total cosine similarity to the nearest centre
        if fit > best_fit:
            best, best_fit = centres, fit
    return best


class GainCritic:
    def __init__(self, centres: torch.Tensor, n_students: int, forget: float = 0.99, ridge: float = 30.0):
        if not 0.0 < forget <= 1.0:
            raise ValueError(f"GainCritic: forget must be in (0, 1], got {forget}")
        self.centres = torch.nn.functional.normalize(centres.detach().float(), dim=1)
        self.forget, self.ridge = forget, ridge
        S, K = n_students, len(centres)
        self.pooled = torch.zeros(S, 2, dtype=torch.float64)  # sum n^2, sum n*y: the mean gain per path
        self.gram = torch.zeros(S, K, K, dtype=torch.float64)  # of the kinds' deviations from that mean
        self.moment = torch.zeros(S, K, dtype=torch.float64)
        self.mean = torch.zeros(S, dtype=torch.float64)
        self.deviation = torch.zeros(S, K, dtype=torch.float64)
        self.noise = torch.zeros(S, 2, dtype=torch.float64)  # forgetful sum of squared prediction errors, count
        self.window = torch.zeros(S, K, dtype=torch.float64)  # routed paths per kind since the last step
        self.awaiting: torch.Tensor | None = None  # the last step's routed counts, waiting for its change
        self.observed = 0

    def kinds(self, embeddings: torch.Tensor) -> torch.Tensor:
        return (torch.nn.functional.normalize(embeddings.detach().float(), dim=1) @ self.centres.T).argmax(dim=1)

    def routed(self, embeddings: torch.Tensor, hard: torch.Tensor) -> None:
        """Add a micro-batch's routed paths (hard [P, S]) to the current optimizer step's window."""
        onehot = torch.nn.functional.one_hot(self.kinds(embeddings), len(self.centres)).double()
        self.window += hard.detach().double().T @ onehot

    def stepped(self) -> None:
        """An optimizer step was taken: its window waits for the change it caused."""
        self.awaiting, self.window = self.window, torch.zeros_like(self.window)

    def observe(self, change: torch.Tensor) -> bool:
        """``change`` [S]: each student's loss on fresh paths after the last step minus before (NaN =
        not measured). Fits the critic; False when no step was waiting for it."""
        if self.awaiting is None:
            return False
        counts, self.awaiting = self.awaiting, None
        y = -change.detach().double()  # gain: the loss fell
        eye = torch.eye(self.gram.shape[1], dtype=self.gram.dtype)
        for s in torch.nonzero(~torch.isnan(y)).flatten().tolist():
            x, n = counts[s], counts[s].sum()
            if n == 0:
                continue
            error = y[s] - self.mean[s] * n - x @ self.deviation[s]  # what the critic did not foresee
            self.noise[s] = self.forget * self.noise[s] + torch.stack([error * error, torch.ones_like(error)])
            self.pooled[s] = self.forget * self.pooled[s] + torch.stack([n * n, n * y[s]])
            self.mean[s] = self.pooled[s, 1] / self.pooled[s, 0]
            # forget only what this step brings news of: a kind the router stopped sending keeps what was
            # learned of it (else its deviation would fade to 0, and a harmful kind come back)
            f = torch.where(x > 0, self.forget, 1.0).sqrt()
            self.gram[s] = torch.outer(f, f) * self.gram[s] + torch.outer(x, x)
            self.moment[s] = f * f * self.moment[s] + x * (y[s] - self.mean[s] * n)
            self.deviation[s] = torch.linalg.solve(self.gram[s] + self.ridge * eye, self.moment[s])
        self.observed += 1
        return True

    def predict(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Predicted gain [P, S] of training each student on each path (nats per character of fresh paths)."""
        return (self.mean[None, :] + self.deviation.T[self.kinds(embeddings)]).float()

    def evidence(self, embeddings: torch.Tensor, relative: bool = False) -> torch.Tensor:
        """[P, S] each path's predicted gain over its standard error: 0 until the critic has seen more
        steps than it has parameters (K kinds + the mean), when a noise estimate from a few residuals
        says nothing (from 2-3 steps, the rounding of a different reduce order moved it twofold).
        ``relative``: its kind's deviation from the mean gain over the deviation's standard error, so a
        change every kind shares (memorised paths forgotten a little by any step) moves no kind."""
        if self.observed <= self.gram.shape[1] + 1:
            return torch.zeros(len(embeddings), self.gram.shape[0])
        var = self.noise[:, 0] / self.noise[:, 1].clamp(min=1e-12)  # [S] a step's change, unexplained
        eye = torch.eye(self.gram.shape[1], dtype=self.gram.dtype)
        inv_diag = torch.diagonal(torch.linalg.inv(self.gram + self.ridge * eye), dim1=1, dim2=2)  # [S, K]
        if relative:
            se, predicted = (var[:, None] * inv_diag).sqrt(), self.deviation
        else:
            se = (var[:, None] * (1 / self.pooled[:, :1].clamp(min=1e-12) + inv_diag)).sqrt()
            predicted = self.mean[:, None] + self.deviation
        z = torch.where(se > 0, predicted / se.clamp(min=1e-30), 0.0)  # [S, K]
        return z.T[self.kinds(embeddings)].float()

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("centres", "pooled", "gram", "moment", "mean", "deviation", "noise",
                                              "window", "awaiting", "observed")}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v.clone() if isinstance(v, torch.Tensor) else v)
