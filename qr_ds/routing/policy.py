"""Who trains on which path: the routing policies the trainer can hold, one interface.

- ``RoutingPolicy`` (the coordinator's half of learned routing): the router MLP, its optimizer, its
  Gumbel generator, the paths it saw last, the gain critic when its signal needs one, and its
  objective, as one object with one state dict. The trainer asks it to route a batch and hands it the
  students' per-path losses (and, for the gain signal, the held-out loss change of the last step);
  nothing else trains the router (reports score paths with a saved one: ``saved_router``).
- ``AllPaths``: every path to every student (w/o Route).
- ``FixedRouting``: a fixed assignment by style (``router.fixed``) and by path (``router.withhold``):
  the oracle arm of a study.

- ``Follower``: a learned router on the ranks other than the coordinator.

``make_policy`` picks one from the config; ``learns`` says whether the router needs per-path losses.
"""
from __future__ import annotations

import math

import torch

from qr_ds.routing.balances import BALANCES
from qr_ds.routing.config import RouterConfig
from qr_ds.routing.gain import GainCritic, kmeans
from qr_ds.routing.gumbel import route_probs, straight_through_route
from qr_ds.routing.objective import router_objective
from qr_ds.routing.recent_paths import RecentPaths
from qr_ds.routing.router import Router
from qr_ds.routing.signals import SIGNALS, SignalInputs


GAIN_SCALE_DECAY = 0.999  # per micro-step: how fast the gain signal's scale forgets its peak (gain_scale: peak)
EVIDENCE_UNIT = 2.0  # gain_scale: evidence: how far past gain_floor a z-score is a unit signal


class AllPaths:
    """w/o Route: every path to every student; nothing to learn or save."""

    learns = False
    measures_gain = False

    def __init__(self, n_students: int):
        self.n_students = n_students

    def route(self, embeddings: torch.Tensor | None, idx: torch.Tensor | None = None) -> torch.Tensor:
        return torch.ones(len(idx) if idx is not None else len(embeddings), self.n_students)


class FixedRouting(AllPaths):
    """A fixed assignment: ``allowed`` [n_paths, S] of 0/1, looked up by path index."""

    def __init__(self, allowed: torch.Tensor):
        super().__init__(allowed.shape[1])
        self.allowed = allowed.float()

    def route(self, embeddings: torch.Tensor | None, idx: torch.Tensor | None = None) -> torch.Tensor:
        if idx is None:
            raise ValueError("FixedRouting.route: needs the batch's path indices")
        return self.allowed[idx].clone()


def withheld_ids(file) -> list[str]:
    """The path ids a router.withhold file lists, one a line."""
    with open(file, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


def unknown_styles(name: str, kept: list[str], styles) -> str | None:
    missing = sorted(set(kept) - set(styles))
    return (f"config key 'router.fixed.{name}': styles {missing} are not in the pool (its styles: "
            f"{sorted(styles)})" if missing else None)


def unmatched_withhold(name: str, file, listed: list[str]) -> str:
    return (f"config key 'router.withhold.{name}': none of the {len(listed)} path ids in {file} is a path of "
            f"this run (first: {listed[0]!r})")


def fixed_assignment(cfg: RouterConfig, students: list[str], styles: list[str], path_styles: torch.Tensor,
                     path_ids) -> torch.Tensor:
    """[n_paths, S] 0/1 of ``router.fixed`` (by style) and ``router.withhold`` (by path id; ``path_ids``
    is called only then), with the config key of any style or file that matches nothing."""
    by_style = torch.ones(len(styles), len(students))
    for name, kept in cfg.fixed.items():
        if problem := unknown_styles(name, kept, styles):
            raise ValueError(problem)
        by_style[:, students.index(name)] = torch.tensor([float(style in kept) for style in styles])
    allowed = by_style[path_styles]
    if cfg.withhold:
        row = {pid: i for i, pid in enumerate(path_ids())}
        for name, file in cfg.withhold.items():
            listed = withheld_ids(file)
            hit = [row[pid] for pid in listed if pid in row]
            if listed and not hit:
                raise ValueError(unmatched_withhold(name, file, listed))
            allowed[hit, students.index(name)] = 0.0
    return allowed


class Follower:
    """A learned router as the other ranks see it: they take the coordinator's broadcast routing and
    measure what it asks for, with no router, optimizer or critic of their own to build."""

    learns = True

    def __init__(self, measures_gain: bool):
        self.measures_gain = measures_gain

    def step(self) -> None:
        pass


class RoutingPolicy:
    learns = True

    def __init__(self, cfg: RouterConfig, in_dim: int, n_students: int, lambda1: float, seed: int,
                 pool_sample: torch.Tensor | None = None):
        """``pool_sample``: embeddings of (a sample of) the pool, whose k-means kinds the gain critic
        credits; needed by signals that use the critic."""
        self.cfg, self.lambda1 = cfg, lambda1
        self.signal, self.balance = SIGNALS[cfg.signal], BALANCES[cfg.entropy]
        torch.manual_seed(seed)
        self.router = Router(in_dim, n_students, cfg.hidden, start_on=cfg.prior_on)
        self.optimizer = torch.optim.Adam(self.router.parameters(), lr=cfg.lr)
        self.gumbel = torch.Generator().manual_seed(seed)
        self.recent = RecentPaths(cfg.rate_window, in_dim, n_students)
        self.critic = None
        if self.signal.needs_gain:
            if pool_sample is None:
                raise ValueError(f"RoutingPolicy: signal {cfg.signal!r} needs pool_sample, embeddings of the pool")
            self.critic = GainCritic(kmeans(pool_sample, cfg.gain_kinds, seed), n_students, cfg.gain_forget)
        self.gain_ms = torch.zeros(())  # running mean square of the predicted gains: the signal's scale
        self._pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None

    @property
    def measures_gain(self) -> bool:
        """The trainer measures each student's held-out loss change around each optimizer step."""
        return self.critic is not None

    def route(self, embeddings: torch.Tensor, trainable: torch.Tensor | None = None) -> torch.Tensor:
        """Hard 0/1 routing [P, S] for a batch; keeps the straight-through graph for ``learn``.
        ``trainable`` [P, S] 0/1: the pairs the data lets train; the others are never routed and give
        the signal term no gradient, the critic no credit and the balance no part of a student's rate,
        neither its value nor its push (the decay term still pulls their P(on) to the prior)."""
        logits = self.router(embeddings)
        alpha = straight_through_route(logits, self.cfg.tau, self.gumbel, ensure_one=self.cfg.ensure_one,
                                       allowed=trainable)
        self._pending = (alpha, logits, embeddings, trainable)
        hard = alpha.detach().clone()
        if self.critic is not None:
            self.critic.routed(embeddings, hard)
        return hard

    def learn(self, path_losses: torch.Tensor, question_index: torch.Tensor, scale: float = 1.0,
              heldout_change: torch.Tensor | None = None) -> dict:
        """Backward the router objective of the last routed batch (gradients accumulate until ``step``).

        ``path_losses`` [P, S]: the students' nats per character on the batch (NaN = unknown).
        ``heldout_change`` [S]: with the gain signal, each student's loss change on fresh paths over the
        last optimizer step (after minus before; None when it was not measured)."""
        if self._pending is None:
            raise RuntimeError("RoutingPolicy.learn: no routed batch to learn from (call route first)")
        alpha, logits, embeddings, trainable = self._pending
        self._pending = None
        stats: dict[str, float] = {}
        gain = None
        if self.critic is not None:
            if heldout_change is not None and self.critic.observe(heldout_change):
                stats.update({f"heldout_change/{s}": v for s, v in enumerate(heldout_change.tolist())})
            if self.cfg.gain_scale == "evidence":
                # A kind moves the router as far as the evidence about its sign goes past gain_floor:
                # 2 more is a unit signal, more is clipped (P(on) ~0.97 / ~0.1 at the logit decay's
                # balance), and a kind the data cannot tell from 0 sits at prior_on. Without the floor,
                # chance z-scores of 1-2 (common among 32 kind-student pairs) dropped no-gain kinds,
                # and with the prior near 1 chance can only take data away (docs/method.md).
                z = self.critic.evidence(embeddings, relative=self.cfg.gain_relative)
                gain = (z.sign() * (z.abs() - self.cfg.gain_floor).clamp(min=0) / EVIDENCE_UNIT).clamp(-1.0, 1.0)
            else:
                gain = self.critic.predict(embeddings)
                # Scale-free: the router's step must not depend on how fast the students happen to learn.
                # The scale is the largest recent one (half-life ~700 steps), not a running mean: once
                # every gain has faded the signal fades with it and the prior decides, where a running
                # mean re-inflated the fading noise to unit size (on the demo task the short student's
                # styles then went on and off by seed: fact_retrieval 0.03-0.98)
                self.gain_ms = torch.maximum(GAIN_SCALE_DECAY * self.gain_ms, gain.pow(2).mean())
                gain = gain / self.gain_ms.sqrt().clamp(min=1e-12)
            stats.update({f"gain/{s}": v for s, v in enumerate(gain.mean(0).tolist())})
        signal = self.signal.fn(SignalInputs(path_losses.detach().float(), gain))
        recent_rate = None
        if self.balance.needs_recent_rate:
            with torch.no_grad():  # the current router re-scores the recent paths: no lag
                recent_rate = self.recent.rate(route_probs(self.router(self.recent.add(embeddings, trainable))))
        loss, more = router_objective(alpha, logits, signal, question_index, self.lambda1, self.balance,
                                      recent_rate, self.cfg, trainable)
        # Keeps each on/off logit gap where the straight-through gradient is alive (P(on) ~0.96 at a
        # unit signal): a saturated router (P(on) 1.00) cannot hear that a path it took has turned harmful.
        # The pull is towards the prior's gap, so a path no evidence speaks about sits at prior_on.
        gap = logits[..., 1] - logits[..., 0] - math.log(self.cfg.prior_on / (1 - self.cfg.prior_on))
        loss = loss + self.cfg.logit_decay * gap.float().pow(2).mean()
        (loss * scale).backward()
        return {"loss": loss.item(), **stats, **more}

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.critic is not None:
            self.critic.stepped()

    def probabilities(self, embeddings: torch.Tensor, batch: int = 4096) -> torch.Tensor:
        """Noise-free P(student gets path) [N, S] over any number of paths (reports, inspection)."""
        return router_probabilities(self.router, embeddings, batch)

    def state_dict(self) -> dict:
        state = {"router": self.router.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "gumbel": self.gumbel.get_state(), "recent_paths": self.recent.state_dict()}
        if self.critic is not None:
            state.update(critic=self.critic.state_dict(), gain_ms=self.gain_ms)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.router.load_state_dict(state["router"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.gumbel.set_state(state["gumbel"])
        if "recent_paths" in state:  # checkpoints written before the rate balance existed have none
            self.recent.load_state_dict(state["recent_paths"])
        if self.critic is not None and "critic" in state:
            self.critic.load_state_dict(state["critic"])
            self.gain_ms = state["gain_ms"].clone()


def make_policy(cfg: RouterConfig, embeddings: torch.Tensor | None, students: list[str], styles: list[str],
                lambda1: float, seed: int, sample: int = 20_000, coordinator: bool = True,
                path_styles: torch.Tensor | None = None, path_ids=None) -> AllPaths | RoutingPolicy | Follower:
    """The policy a config names: no router, a fixed assignment (``fixed_assignment`` of each path's
    style index ``path_styles`` and, for router.withhold, ``path_ids()``), or the learned router (whose
    gain critic groups paths by k-means over at most ``sample`` of the pool's ``embeddings``); off the
    ``coordinator``, the learned router's ``Follower``."""
    if not cfg.enabled:
        return AllPaths(len(students))
    if cfg.assigned:
        return FixedRouting(fixed_assignment(cfg, students, styles, path_styles, path_ids))
    needs_gain = SIGNALS[cfg.signal].needs_gain
    if not coordinator:
        return Follower(needs_gain)
    pool_sample = None
    if needs_gain:
        pick = torch.randperm(len(embeddings), generator=torch.Generator().manual_seed(seed))[:sample].sort().values
        pool_sample = torch.as_tensor(embeddings[pick.numpy()])
    return RoutingPolicy(cfg, embeddings.shape[1], len(students), lambda1, seed, pool_sample=pool_sample)


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
