"""A routing experiment whose right answer is known: planted per-style loss preferences.

Each of ``n_styles`` styles is preferred by one student (contiguous groups: with 2 students,
student 0 has a loss ``gap`` nats lower on styles 0-2 and student 1 on 3-5). Path embeddings carry
the style (a per-style direction) plus the question's content, as a sentence encoder's would. The
production ``RoutingPolicy`` routes batches and learns from these losses; success means the
noise-free routing sends every style to its preferred student (P(on) >= 0.8) and not to the others
(<= 0.2). How the gap moves during the run is the ``case``:

- ``constant``: ``gap`` throughout (``gap=0``: students alike, routing must stay balanced);
- ``converging``: ``gap`` shrinks linearly to 0 at step ``gap_gone_at`` (students that learn from
  the same paths grow alike); the routing learned while the gap existed must hold;
- ``learning``: every (student, style) loss falls with the number of paths of that style routed to
  that student, ``floor + start * exp(-routed / learn_paths)``, with the preferred student's
  ``start`` lower by ``gap``. Routing to both makes both learn and the gap vanish; routing to the
  preferred one only widens it to ``learnable``: the students learn what they are routed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch

from qr_ds.routing.config import RouterConfig
from qr_ds.routing.policy import RoutingPolicy


@dataclass
class Planted:
    n_students: int = 2
    gap: float = 0.6  # nats lower for the preferred student; 0 = every student alike
    case: Literal["constant", "converging", "learning"] = "constant"
    gap_gone_at: int = 400  # converging: the step at which the gap reaches 0
    learnable: float = 0.6  # learning: nats a student can gain on a style it is not preferred for
    learn_paths: float = 200.0  # learning: routed paths of a style for its learnable loss to fall by 1/e
    noise: float = 0.1
    batch_order: Literal["shuffled", "by_question"] = "shuffled"  # by_question: a batch holds whole questions
    steps: int = 600
    batch_paths: int = 32
    n_questions: int = 200
    n_styles: int = 6
    embed_dim: int = 64
    seed: int = 0
    on: float = 0.8  # success thresholds on the noise-free P(on)
    off: float = 0.2


def preferred(style: torch.Tensor, n_students: int, n_styles: int) -> torch.Tensor:
    return style * n_students // n_styles


def make_pool(p: Planted):
    """(embeddings [N, E], style [N], question [N], shared loss [N]) for every question x style; the
    shared loss is what moves every student alike (a question's difficulty, a style's length)."""
    g = torch.Generator().manual_seed(p.seed)
    question = torch.arange(p.n_questions).repeat_interleave(p.n_styles)
    style = torch.arange(p.n_styles).repeat(p.n_questions)
    style_dir = torch.randn(p.n_styles, p.embed_dim, generator=g)
    content = torch.randn(p.n_questions, p.embed_dim, generator=g)
    emb = style_dir[style] + content[question] + 0.3 * torch.randn(len(style), p.embed_dim, generator=g)
    emb = emb / emb.norm(dim=1, keepdim=True)
    difficulty = 1.0 + 2.0 * torch.rand(p.n_questions, generator=g)
    style_level = 0.5 * torch.rand(p.n_styles, generator=g)
    return emb, style, question, difficulty[question] + style_level[style]


class StudentSkills:
    """Each student's extra loss per style [S, n_styles] at a step, as the case prescribes."""

    def __init__(self, p: Planted):
        self.p = p
        self.mine = torch.nn.functional.one_hot(preferred(torch.arange(p.n_styles), p.n_students, p.n_styles),
                                                p.n_students).T.float()  # [S, styles]: 1 = preferred
        self.routed = torch.zeros(p.n_students, p.n_styles)

    def offsets(self, step: int) -> torch.Tensor:
        p = self.p
        if p.case == "constant":
            return -p.gap * self.mine
        if p.case == "converging":
            return -p.gap * max(0.0, 1 - step / p.gap_gone_at) * self.mine
        if p.case == "learning":
            start = p.learnable - p.gap * self.mine
            return start * torch.exp(-self.routed / p.learn_paths)
        raise ValueError(f"Planted.case must be 'constant', 'converging' or 'learning', got {p.case!r}")

    def trained_on(self, hard: torch.Tensor, style: torch.Tensor) -> None:
        """Count the paths of each style each student was routed (hard [P, S])."""
        self.routed += hard.T @ torch.nn.functional.one_hot(style, self.p.n_styles).float()

    def gap_now(self, step: int) -> list[float]:
        """Per style: the best other student's loss minus the preferred student's."""
        off = self.offsets(step)
        out = []
        for k in range(self.p.n_styles):
            best = int(preferred(torch.tensor(k), self.p.n_students, self.p.n_styles))
            others = [off[s, k] for s in range(self.p.n_students) if s != best]
            out.append(float(min(others) - off[best, k]))
        return out


def batches(p: Planted, n: int, g: torch.Generator):
    """Endless batches of path indices in the requested order."""
    while True:
        if p.batch_order == "by_question":
            order = torch.cat([q * p.n_styles + torch.randperm(p.n_styles, generator=g)
                               for q in torch.randperm(p.n_questions, generator=g).tolist()])
        else:
            order = torch.randperm(n, generator=g)
        for i in range(0, n - p.batch_paths + 1, p.batch_paths):
            yield order[i:i + p.batch_paths]


def style_table(probs: torch.Tensor, style: torch.Tensor, n_styles: int) -> list[list[float]]:
    """Mean noise-free P(on) [style][student]."""
    return [probs[style == k].mean(dim=0).tolist() for k in range(n_styles)]


def solved(table: list[list[float]], p: Planted) -> bool:
    for k, row in enumerate(table):
        best = int(preferred(torch.tensor(k), p.n_students, p.n_styles))
        if row[best] < p.on or any(v > p.off for s, v in enumerate(row) if s != best):
            return False
    return True


def run_planted(p: Planted, router: RouterConfig | None = None, lambda1: float = 1.0,
                record_every: int = 25) -> dict:
    """Train a RoutingPolicy on planted losses; return its trajectory and final routing."""
    router = router or RouterConfig()
    emb, style, question, shared = make_pool(p)
    policy = RoutingPolicy(router, p.embed_dim, p.n_students, lambda1, seed=p.seed, pool_sample=emb)
    skills = StudentSkills(p)
    g = torch.Generator().manual_seed(p.seed + 1)
    stream = batches(p, len(style), g)
    history, first_solved = [], None
    for step in range(1, p.steps + 1):
        idx = next(stream)
        hard = policy.route(emb[idx])
        loss = shared[idx][:, None] + skills.offsets(step)[:, style[idx]].T
        policy.learn(loss + p.noise * torch.randn(len(idx), p.n_students, generator=g), question[idx])
        policy.step()
        skills.trained_on(hard, style[idx])
        if step % record_every == 0 or step == p.steps:
            probs = policy.probabilities(emb)
            table = style_table(probs, style, p.n_styles)
            history.append({"step": step, "p_on": table, "rate": probs.mean(0).tolist(),
                            "solved": solved(table, p), "gap": skills.gap_now(step)})
            if first_solved is None and history[-1]["solved"]:
                first_solved = step
    probs = policy.probabilities(emb)
    final = style_table(probs, style, p.n_styles)
    return {"setup": asdict(p), "router": asdict(router), "lambda1": lambda1, "p_on": final,
            "solved": solved(final, p), "first_solved_step": first_solved,
            "student_share": (probs.sum(0) / probs.sum()).tolist(), "rate": probs.mean(0).tolist(),
            "history": history}


def rate_range(result: dict, after_step: int) -> tuple[float, float]:
    """Lowest and highest per-student mean P(on) over the checks after ``after_step`` (warm-up)."""
    rates = [r for h in result["history"] if h["step"] > after_step for r in h["rate"]]
    return min(rates), max(rates)


def preferred_and_other(table: list[list[float]], p: Planted) -> tuple[float, float]:
    """The lowest P(on) of a style's preferred student and the highest of any other student."""
    pref, other = [], []
    for k, row in enumerate(table):
        best = int(preferred(torch.tensor(k), p.n_students, p.n_styles))
        pref.append(row[best])
        other += [v for s, v in enumerate(row) if s != best]
    return min(pref), max(other)
