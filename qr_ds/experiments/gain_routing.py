"""Routing experiments whose right answer is known, for the gain signal: students whose held-out loss
moves by what they are trained on.

Each student s keeps a loss per style j. A path of style k routed to s changes s's loss on every
style j by ``-rate * effect[s, k, j] * exp(-seen[s, k] / capacity)``: ``effect`` > 0 teaches, < 0
harms, and what s can still learn from a style fades with the paths of it s has seen (saturation).
After each step the "held-out change" is the change of s's loss averaged over the next batch's
styles, exactly what the trainer measures on its next batch, times (1 + noise x a standard normal):
the trainer's measurement is paired (the same paths before and after), so its noise scales with the
step's own effect. Path
embeddings carry the style and the question (``planted_routing.make_pool``). Cases:

- ``all_helpful``: every style teaches both students (1 on its own style, ``transfer`` on the others):
  routing must stay near all-on (each student's rate >= 0.8), as w/o Route would.
- ``harm``: as ``all_helpful``, but style ``harmful`` raises student 0's loss on every other style by
  ``harm`` per path once student 0 has seen ``harm_after`` of its paths (a wrong rule learned):
  student 0 must stop getting it (P(on) <= 0.2) while keeping the rest (>= 0.8).
- ``saturation``: student 0 starts with style ``saturated`` learned (``capacity`` paths already
  seen x 6), student 1 has not: the style must go to student 1 (P(on) >= 0.8).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch

from qr_ds.experiments.planted_routing import Planted, batches, make_pool, style_table
from qr_ds.routing.config import GAIN_FORM, RouterConfig
from qr_ds.routing.policy import RoutingPolicy


@dataclass
class GainCase:
    case: Literal["all_helpful", "harm", "saturation"] = "all_helpful"
    n_students: int = 2
    n_styles: int = 6
    transfer: float = 0.3  # what a style teaches about the others, relative to itself
    harmful: int = 2  # harm: the style that harms student 0
    harm: float = 0.6  # harm: x rate nats per path on each other style
    harm_after: int = 200  # harm: student 0's paths of the harmful style before the harm starts
    saturated: int = 4  # saturation: the style student 0 has already learned
    capacity: float = 600.0  # paths of a style after which what it teaches has fallen by 1/e
    rate: float = 2e-3  # nats per path, at full effect
    noise: float = 0.5  # measurement noise: its sd as a fraction of the step's true change (per student)
    steps: int = 600
    batch_paths: int = 8
    n_questions: int = 300
    embed_dim: int = 64
    seed: int = 0
    on: float = 0.8
    off: float = 0.2


class LearningStudents:
    def __init__(self, c: GainCase):
        self.c = c
        S, K = c.n_students, c.n_styles
        self.effect = torch.full((S, K, K), c.transfer) + (1 - c.transfer) * torch.eye(K)
        self.loss = torch.full((S, K), 2.0)
        self.seen = torch.zeros(S, K)
        if c.case == "saturation":
            self.seen[0, c.saturated] = 6 * c.capacity

    def train(self, hard: torch.Tensor, style: torch.Tensor) -> None:
        c = self.c
        counts = hard.T @ torch.nn.functional.one_hot(style, c.n_styles).float()  # [S, K] paths routed
        left = torch.exp(-self.seen / c.capacity)  # [S, K] what each style can still teach
        effect = self.effect.clone()
        if c.case == "harm" and self.seen[0, c.harmful] >= c.harm_after:
            others = torch.arange(c.n_styles) != c.harmful
            effect[0, c.harmful, others] = -c.harm
            left[0, c.harmful] = 1.0  # a wrong rule keeps doing harm: it does not saturate
        self.loss -= c.rate * torch.einsum("sk,sk,skj->sj", counts, left, effect)
        self.seen += counts

    def heldout(self, style: torch.Tensor) -> torch.Tensor:
        """[S] mean loss over the given paths' styles (a batch of fresh paths)."""
        return self.loss[:, style].mean(dim=1)


def expected(c: GainCase) -> torch.Tensor:
    """[K, S] the right routing: 1 = should get the style, 0 = should not, NaN = either."""
    want = torch.ones(c.n_styles, c.n_students)
    if c.case == "harm":
        want[c.harmful, 0] = 0
    if c.case == "saturation":
        want[c.saturated, 0] = float("nan")
    return want


def solved(table: list[list[float]], c: GainCase) -> bool:
    want = expected(c)
    for k, row in enumerate(table):
        for s, p in enumerate(row):
            w = float(want[k, s])
            if (w == 1 and p < c.on) or (w == 0 and p > c.off):
                return False
    return True


def run_gain_case(c: GainCase, router: RouterConfig | None = None, lambda1: float = 1.0,
                  record_every: int = 25) -> dict:
    """Train a RoutingPolicy as the trainer would: route, train the students, measure the held-out
    change on the next batch (before and after the step), learn, step."""
    router = router or RouterConfig(**GAIN_FORM)
    p = Planted(n_students=c.n_students, n_styles=c.n_styles, n_questions=c.n_questions,
                embed_dim=c.embed_dim, seed=c.seed, batch_paths=c.batch_paths)
    emb, style, question, shared = make_pool(p)
    policy = RoutingPolicy(router, c.embed_dim, c.n_students, lambda1, seed=c.seed, pool_sample=emb)
    students = LearningStudents(c)
    g = torch.Generator().manual_seed(c.seed + 1)
    stream = batches(p, len(style), g)
    idx, change, history = next(stream), None, []
    for step in range(1, c.steps + 1):
        hard = policy.route(emb[idx])
        losses = shared[idx][:, None] + students.loss[:, style[idx]].T
        nxt = next(stream)
        before = students.heldout(style[nxt])
        policy.learn(losses + 0.1 * torch.randn(losses.shape, generator=g), question[idx], heldout_change=change)
        policy.step()
        students.train(hard, style[idx])
        change = students.heldout(style[nxt]) - before
        change = change + c.noise * change.abs() * torch.randn(c.n_students, generator=g)
        idx = nxt
        if step % record_every == 0 or step == c.steps:
            probs = policy.probabilities(emb)
            table = style_table(probs, style, c.n_styles)
            history.append({"step": step, "p_on": table, "rate": probs.mean(0).tolist(),
                            "solved": solved(table, c), "loss": students.loss.mean(1).tolist()})
    probs = policy.probabilities(emb)
    final = style_table(probs, style, c.n_styles)
    return {"setup": asdict(c), "router": asdict(router), "lambda1": lambda1, "p_on": final,
            "solved": solved(final, c), "rate": probs.mean(0).tolist(),
            "final_loss": students.loss.mean(1).tolist(), "history": history}
