"""A routing experiment whose right answer is known: planted per-style loss preferences.

Each of ``n_styles`` styles is preferred by one student (contiguous groups: with 2 students,
student 0 has a loss ``gap`` nats lower on styles 0-2 and student 1 on 3-5). Path embeddings carry
the style (a per-style direction) plus the question's content, as a sentence encoder's would. The
production ``RoutingPolicy`` routes batches and learns from these losses; success means the
noise-free routing sends every style to its preferred student (P(on) >= 0.8) and not to the others
(<= 0.2). With ``gap=0`` every student has the same loss, and routing must stay balanced.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from qr_ds.routing.config import RouterConfig
from qr_ds.routing.policy import RoutingPolicy


@dataclass
class Planted:
    n_students: int = 2
    gap: float = 0.6  # nats lower for the preferred student; 0 = every student alike
    noise: float = 0.1
    batch_order: str = "shuffled"  # or "by_question": a batch holds whole questions
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
    """(embeddings [N, E], style [N], question [N], mean loss [N, S]) for every question x style."""
    g = torch.Generator().manual_seed(p.seed)
    question = torch.arange(p.n_questions).repeat_interleave(p.n_styles)
    style = torch.arange(p.n_styles).repeat(p.n_questions)
    style_dir = torch.randn(p.n_styles, p.embed_dim, generator=g)
    content = torch.randn(p.n_questions, p.embed_dim, generator=g)
    emb = style_dir[style] + content[question] + 0.3 * torch.randn(len(style), p.embed_dim, generator=g)
    emb = emb / emb.norm(dim=1, keepdim=True)
    # A question's difficulty and a style's length move every student's loss alike.
    difficulty = 1.0 + 2.0 * torch.rand(p.n_questions, generator=g)
    style_level = 0.5 * torch.rand(p.n_styles, generator=g)
    loss = (difficulty[question] + style_level[style])[:, None].repeat(1, p.n_students)
    pref = preferred(style, p.n_students, p.n_styles)
    loss[torch.arange(len(style)), pref] -= p.gap
    return emb, style, question, loss


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
    emb, style, question, loss = make_pool(p)
    policy = RoutingPolicy(router, p.embed_dim, p.n_students, lambda1, seed=p.seed)
    g = torch.Generator().manual_seed(p.seed + 1)
    stream = batches(p, len(style), g)
    history, first_solved = [], None
    for step in range(1, p.steps + 1):
        idx = next(stream)
        policy.route(emb[idx])
        observed = loss[idx] + p.noise * torch.randn(len(idx), p.n_students, generator=g)
        policy.learn(observed, question[idx])
        policy.step()
        if step % record_every == 0 or step == p.steps:
            table = style_table(policy.probabilities(emb), style, p.n_styles)
            history.append({"step": step, "p_on": table})
            if first_solved is None and solved(table, p):
                first_solved = step
    probs = policy.probabilities(emb)
    final = style_table(probs, style, p.n_styles)
    return {"setup": asdict(p), "router": asdict(router), "lambda1": lambda1, "p_on": final,
            "solved": solved(final, p), "first_solved_step": first_solved,
            "student_share": (probs.sum(0) / probs.sum()).tolist(), "rate": probs.mean(0).tolist(),
            "history": history}
