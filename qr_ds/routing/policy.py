"""The coordinator's half of routing: the router MLP, its optimizer, its Gumbel generator, the paths
it saw last and its objective, as one object with one state dict. The trainer asks it to route a
batch and hands it the students' per-path losses; nothing else trains the router (reports score
paths with a saved one: ``saved_router``)."""
from __future__ import annotations

import torch

from qr_ds.routing.config import RouterConfig
from qr_ds.routing.gumbel import route_probs, straight_through_route
from qr_ds.routing.losses import router_objective
from qr_ds.routing.recent_paths import RecentPaths
from qr_ds.routing.router import Router


class RoutingPolicy:
    def __init__(self, cfg: RouterConfig, in_dim: int, n_students: int, lambda1: float, seed: int):
        self.cfg, self.lambda1 = cfg, lambda1
        torch.manual_seed(seed)
        self.router = Router(in_dim, n_students, cfg.hidden)
        self.optimizer = torch.optim.Adam(self.router.parameters(), lr=cfg.lr)
        self.gumbel = torch.Generator().manual_seed(seed)
        self.recent = RecentPaths(cfg.rate_window, in_dim)
        self._pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def route(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Hard 0/1 routing [P, S] for a batch; keeps the straight-through graph for ``learn``."""
        logits = self.router(embeddings)
        alpha = straight_through_route(logits, self.cfg.tau, self.gumbel, ensure_one=self.cfg.ensure_one)
        self._pending = (alpha, logits, embeddings)
        return alpha.detach().clone()

    def learn(self, path_losses: torch.Tensor, question_index: torch.Tensor, scale: float = 1.0) -> dict:
        """Backward the router objective of the last routed batch (gradients accumulate until ``step``)."""
        if self._pending is None:
            raise RuntimeError("RoutingPolicy.learn: no routed batch to learn from (call route first)")
        alpha, logits, embeddings = self._pending
        self._pending = None
        recent_rate = None
        if self.cfg.entropy == "rate":
            with torch.no_grad():  # the current router re-scores the recent paths: no lag
                recent_rate = route_probs(self.router(self.recent.add(embeddings))).mean(dim=0)
        loss, stats = router_objective(alpha, logits, path_losses, question_index, self.lambda1, self.cfg.signal,
                                       self.cfg.entropy, recent_rate, self.cfg.rate_target)
        (loss * scale).backward()
        return {"loss": loss.item(), **stats}

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def probabilities(self, embeddings: torch.Tensor, batch: int = 4096) -> torch.Tensor:
        """Noise-free P(student gets path) [N, S] over any number of paths (reports, inspection)."""
        return router_probabilities(self.router, embeddings, batch)

    def state_dict(self) -> dict:
        return {"router": self.router.state_dict(), "optimizer": self.optimizer.state_dict(),
                "gumbel": self.gumbel.get_state(), "recent_paths": self.recent.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.router.load_state_dict(state["router"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.gumbel.set_state(state["gumbel"])
        if "recent_paths" in state:  # checkpoints written before the rate balance existed have none
            self.recent.load_state_dict(state["recent_paths"])


@torch.no_grad()
def router_probabilities(router: Router, embeddings: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    was_training = router.training
    router.eval()
    out = torch.cat([route_probs(router(embeddings[i:i + batch]))
                     for i in range(0, len(embeddings), batch)]) if len(embeddings) else torch.zeros(0)
    router.train(was_training)
    return out


def saved_router(cfg: RouterConfig, state: dict, in_dim: int, n_students: int) -> Router:
    """The router of a saved policy state, to score paths with ``router_probabilities``: a report
    needs no optimizer, and building the first Adam imports ~900 modules (1.1 CPU-s here)."""
    router = Router(in_dim, n_students, cfg.hidden)
    router.load_state_dict(state["router"])
    return router
