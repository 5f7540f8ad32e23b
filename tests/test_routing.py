"""Router, straight-through Gumbel routing and the router objective (paper eq. 1-4, 9)."""
from __future__ import annotations

import math

import pytest
import torch

from qr_ds.routing import (Router, RouterConfig, RoutingPolicy, RoutingTally, balance_entropy, load_entropy,
                           route_probs, router_objective, routing_rates, routing_signal, straight_through_route)
from qr_ds.routing.gumbel import gumbel_noise
from qr_ds.routing.planted import Planted, run_planted


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny matmuls: threads only fight the other processes on a shared 2-core box
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_router_shapes_and_input_check():
    router = Router(in_dim=8, n_students=3, hidden=16)
    assert router(torch.randn(5, 8)).shape == (5, 3, 2)
    with pytest.raises(ValueError, match=r"\[P, 8\]"):
        router(torch.randn(5, 7))


def test_hard_alpha_is_binary_and_follows_the_noisy_winner():
    logits = torch.randn(64, 3, 2)
    alpha = straight_through_route(logits, tau=0.7, generator=_gen(), ensure_one=False)
    assert set(alpha.unique().tolist()) <= {0.0, 1.0}
    noisy = logits + gumbel_noise(logits.shape, _gen(), logits.device)
    assert torch.equal(alpha, (noisy[..., 1] > noisy[..., 0]).float())
    soft = straight_through_route(logits, tau=0.7, generator=_gen(), hard=False)
    assert torch.allclose(soft, torch.softmax(noisy / 0.7, dim=-1)[..., 1])


def test_same_generator_state_gives_same_alpha_for_resume():
    logits = torch.randn(32, 2, 2)
    gen = _gen(7)
    straight_through_route(logits, 1.0, gen)  # advance: resume happens mid-run
    state = gen.get_state()
    first = straight_through_route(logits, 1.0, gen)
    second_draw = straight_through_route(logits, 1.0, gen)
    restored = torch.Generator()
    restored.set_state(state)
    assert torch.equal(straight_through_route(logits, 1.0, restored), first)
    assert torch.equal(straight_through_route(logits, 1.0, restored), second_draw)
    assert not torch.equal(first, second_draw), "fresh noise on every call"


def test_ensure_one_gives_orphans_to_the_most_likely_student():
    logits = torch.zeros(200, 3, 2)
    logits[..., 0] = 6.0  # "off" almost always wins
    logits[:, 2, 1] = 3.0  # student 2 is the least unlikely
    free = straight_through_route(logits, 1.0, _gen(), ensure_one=False)
    assert (free.sum(1) == 0).sum() > 150
    alpha = straight_through_route(logits, 1.0, _gen(), ensure_one=True)
    assert (alpha.sum(1) >= 1).all()
    soft = straight_through_route(logits, 1.0, _gen(), hard=False)
    orphans = free.sum(1) == 0
    assert torch.equal(alpha[orphans].argmax(1), soft[orphans].argmax(1))
    assert torch.equal(alpha[~orphans], free[~orphans]), "paths that had a student are untouched"
    assert (alpha[orphans].argmax(1) == 2).float().mean() > 0.6  # 1/3 by chance
    # the forced assignment is still straight-through: its gradient is the soft prob's
    leaf = logits.clone().requires_grad_()
    straight_through_route(leaf, 1.0, _gen())[orphans].sum().backward()
    assert leaf.grad[orphans].abs().sum() > 0


def test_route_probs_is_the_probability_of_the_hard_decision_whatever_tau():
    logits = torch.randn(3, 2, 2)
    assert torch.allclose(route_probs(logits, 2.0), torch.sigmoid(logits[..., 1] - logits[..., 0]))
    many = logits.repeat(4000, 1, 1)
    hard = straight_through_route(many, tau=2.0, generator=_gen(), ensure_one=False)
    empirical = hard.view(4000, 3, 2).mean(0)
    assert torch.allclose(empirical, route_probs(logits, 2.0), atol=0.03)
    with pytest.raises(ValueError, match="tau"):
        route_probs(logits, 0.0)
    with pytest.raises(ValueError, match=r"\[P, S, 2\]"):
        route_probs(torch.randn(4, 2), 1.0)


def test_relative_signal_keeps_only_the_student_path_interaction():
    difficulty = torch.tensor([[1.0], [3.0], [2.0], [5.0]])  # every student alike
    level = torch.tensor([[0.0, 2.0]])  # student 1 is worse everywhere
    prefer = torch.tensor([[-0.3, 0.3], [-0.3, 0.3], [0.3, -0.3], [0.3, -0.3]])
    sig = routing_signal(difficulty + level + prefer, "relative")
    assert torch.allclose(sig, prefer, atol=1e-6)
    raw = difficulty + level + prefer
    assert torch.equal(routing_signal(raw, "raw"), raw)
    raw[0, 1] = float("nan")  # unknown entries stay unknown and do not poison the means
    sig = routing_signal(raw, "relative")
    assert torch.isnan(sig[0, 1]) and not torch.isnan(sig[1:]).any()
    with pytest.raises(ValueError, match="relative"):
        routing_signal(raw, "centred")


def test_balance_entropy_matches_eq_3_4_by_hand():
    alpha = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    q = torch.tensor([3, 3, 9, 9, 5])
    # q3: 3 of 4 -> 0.75; q9: 1 of 4 -> 0.25; q5: 2 of 2 -> 1 (entropy 0)
    h = lambda a: -(a * math.log(a) + (1 - a) * math.log(1 - a))
    expected = (h(0.75) + h(0.25) + 0.0) / 3
    assert balance_entropy(alpha, q).item() == pytest.approx(expected, abs=1e-5)
    one_takes_all = torch.tensor([[1.0, 0.0]] * 4)
    assert balance_entropy(one_takes_all, torch.zeros(4, dtype=torch.long)).item() == pytest.approx(math.log(2))


def test_paper_entropy_gradient_drowns_the_loss_signal_with_one_path_per_question():
    """The arithmetic of docs/architecture.md: one path per question makes abar 0 or 1; the clamp's
    gradient then is about log((1-eps)/eps)/S = 6.9 per entry, against a loss signal of 0.1-0.5."""
    P, S = 32, 2
    soft = torch.full((P, S), 0.5, requires_grad=True)
    hard = torch.zeros(P, S)
    hard[:, 0] = 1  # each path to student 0 only: abar = 1/2 ... unless the path is alone
    hard[::2] = torch.tensor([1.0, 1.0])
    alpha = hard + (soft - soft.detach())
    balance_entropy(alpha, torch.arange(P)).backward()  # a question per path
    per_entry = soft.grad.abs()[::2] * P  # undo the mean over questions
    assert per_entry.min() > 6.5, per_entry


def test_load_entropy_is_balanced_at_equal_shares_and_blind_to_how_paths_split():
    exclusive = torch.tensor([[0.99, 0.01], [0.01, 0.99]] * 8)
    shared = torch.full((16, 2), 0.5)
    assert load_entropy(exclusive).item() == pytest.approx(1.0, abs=1e-4)
    assert load_entropy(shared).item() == pytest.approx(1.0, abs=1e-6)
    p = exclusive.clone().requires_grad_()
    load_entropy(p).backward()
    assert p.grad.abs().max() < 1e-3, "no push towards 50/50 per path when shares are equal"
    starving = torch.tensor([[0.9, 0.05]] * 16, requires_grad=True)
    assert load_entropy(starving).item() < 0.5
    (-load_entropy(starving)).backward()
    assert (starving.grad[:, 1] < 0).all() and (starving.grad[:, 0] > 0).all(), "the starved student is pulled up"


def test_gradient_wrt_soft_prob_is_signal_over_P():
    P, S = 6, 3
    soft = torch.rand(P, S, requires_grad=True)
    hard = (soft.detach() > 0.5).float()
    alpha = hard + (soft - soft.detach())
    losses = torch.rand(P, S) * 3
    losses[1, 2] = float("nan")  # unknown: contributes nothing
    loss, stats = router_objective(alpha, torch.zeros(P, S, 2), losses, torch.arange(P), lambda1=0.0)
    loss.backward()
    expected = torch.nan_to_num(routing_signal(losses, "relative"), nan=0.0) / P
    assert torch.allclose(soft.grad, expected, atol=1e-7)
    assert soft.grad[1, 2] == 0
    assert stats["rate/0"] == pytest.approx(hard[:, 0].mean().item())
    assert 0 < stats["known_frac"] < 1


def test_policy_router_gets_gradient_from_losses_and_state_round_trips():
    policy = RoutingPolicy(RouterConfig(hidden=32), in_dim=16, n_students=2, lambda1=0.0, seed=0)
    h = torch.randn(12, 16)
    policy.route(h)
    policy.learn(torch.rand(12, 2), torch.arange(12))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.router.parameters())
    with pytest.raises(RuntimeError, match="route first"):
        policy.learn(torch.rand(12, 2), torch.arange(12))
    policy.step()
    twin = RoutingPolicy(RouterConfig(hidden=32), in_dim=16, n_students=2, lambda1=0.0, seed=5)
    twin.load_state_dict(policy.state_dict())
    assert torch.equal(twin.route(h), policy.route(h)), "same weights and Gumbel state: same routing"
    assert torch.allclose(twin.probabilities(h), policy.probabilities(h))


def test_routing_rates_per_key():
    alpha = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    keys = ["cot", "cot", "program", "program"]
    rates = routing_rates(alpha, keys, ["llama", "gemma"])
    assert rates == {"cot": {"llama": 1.0, "gemma": 0.5}, "program": {"llama": 0.0, "gemma": 1.0}}
    tally = RoutingTally(["llama", "gemma"])
    tally.update(alpha[:2], keys[:2])
    tally.update(alpha[2:], keys[2:])
    tally.update(torch.tensor([[0.0, 0.0]]), ["cot"])
    assert tally.rates()["cot"] == {"llama": pytest.approx(2 / 3), "gemma": pytest.approx(1 / 3)}
    with pytest.raises(ValueError, match="len\\(keys\\)"):
        tally.update(alpha, keys[:3])


# Known-answer experiments (benchmarks/bench_routing.py runs the full grid and writes JSON).
@pytest.mark.parametrize("order", ["shuffled", "by_question"])
@pytest.mark.parametrize("students", [2, 3])
def test_router_learns_planted_style_preferences(students, order):
    """A 0.6-nat advantage per style group: every style goes to its student (P(on) >= 0.8) and to no
    other (<= 0.2) within 600 steps, in either batch order, with the shipped defaults."""
    result = run_planted(Planted(n_students=students, gap=0.6, batch_order=order))
    assert result["solved"], result["p_on"]
    assert result["first_solved_step"] <= 600


@pytest.mark.parametrize("order", ["shuffled", "by_question"])
@pytest.mark.parametrize("students", [2, 3])
def test_router_stays_balanced_when_students_are_alike(students, order):
    result = run_planted(Planted(n_students=students, gap=0.0, batch_order=order))
    for share in result["student_share"]:
        assert abs(share - 1 / students) < 0.05, result["student_share"]
    assert min(result["rate"]) > 0.3, result["rate"]  # no student starves
    for row in result["p_on"]:
        assert max(row) - min(row) < 0.25, result["p_on"]  # no style is claimed by anyone


def test_paper_literal_form_does_not_learn_the_planted_preferences():
    """The switch that keeps eq. 3-4 and 9 as written: the same 0.6-nat gap is not learned."""
    paper = RouterConfig(signal="raw", entropy="paper")
    result = run_planted(Planted(n_students=2, gap=0.6, batch_order="by_question"), paper)
    assert not result["solved"]
