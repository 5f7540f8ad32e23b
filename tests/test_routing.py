"""Router, straight-through Gumbel routing and the router objective (paper eq. 1-4, 9)."""
from __future__ import annotations

import math

import pytest
import torch

from qr_ds.routing import (Router, RoutingTally, balance_entropy, route_probs, router_objective,
                           routing_rates, straight_through_route)
from qr_ds.routing.gumbel import gumbel_noise


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


def test_route_probs_is_noise_free_softmax():
    logits = torch.randn(4, 2, 2)
    assert torch.allclose(route_probs(logits, 2.0), torch.sigmoid((logits[..., 1] - logits[..., 0]) / 2.0))
    with pytest.raises(ValueError, match="tau"):
        route_probs(logits, 0.0)
    with pytest.raises(ValueError, match=r"\[P, S, 2\]"):
        route_probs(torch.randn(4, 2), 1.0)


def test_balance_entropy_matches_eq_3_4_by_hand():
    alpha = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    q = torch.tensor([3, 3, 9, 9, 5])
    # q3: 3 of 4 -> 0.75; q9: 1 of 4 -> 0.25; q5: 2 of 2 -> 1 (entropy 0)
    h = lambda a: -(a * math.log(a) + (1 - a) * math.log(1 - a))
    expected = (h(0.75) + h(0.25) + 0.0) / 3
    assert balance_entropy(alpha, q).item() == pytest.approx(expected, abs=1e-5)
    half = torch.full((4, 2), 0.5)
    assert balance_entropy(half, torch.zeros(4, dtype=torch.long)).item() == pytest.approx(math.log(2))
    # per student: q3 -> (1, 0.5), q9 -> (0, 0.5), q5 -> (1, 1)
    per_student = (h(0.5) + h(0.5)) / 6
    assert balance_entropy(alpha, q, per_student=True).item() == pytest.approx(per_student, abs=1e-5)
    one_takes_all = torch.tensor([[1.0, 0.0]] * 4)
    q0 = torch.zeros(4, dtype=torch.long)
    assert balance_entropy(one_takes_all, q0).item() == pytest.approx(math.log(2))  # eq. 3 cannot tell
    assert balance_entropy(one_takes_all, q0, per_student=True).item() < 1e-4


def test_entropy_pushes_back_from_all_on_routing():
    soft = torch.full((4, 2), 0.9, requires_grad=True)
    alpha = torch.ones(4, 2) + (soft - soft.detach())  # everything routed everywhere: abar = 1
    (-balance_entropy(alpha, torch.zeros(4, dtype=torch.long))).backward()
    assert (soft.grad > 0).all(), "minimizing -H must lower the on-probabilities at abar = 1"


def test_gradient_wrt_soft_prob_is_path_loss_over_P():
    P, S = 6, 3
    soft = torch.rand(P, S, requires_grad=True)
    hard = (soft.detach() > 0.5).float()
    alpha = hard + (soft - soft.detach())
    losses = torch.rand(P, S) * 3
    losses[1, 2] = float("nan")  # unknown: contributes nothing
    loss, stats = router_objective(alpha, losses, torch.arange(P), lambda1=0.0)
    loss.backward()
    expected = torch.nan_to_num(losses, nan=0.0) / P
    assert torch.allclose(soft.grad, expected)
    assert soft.grad[1, 2] == 0
    assert loss.item() == pytest.approx((hard * expected).sum().item(), rel=1e-6)
    assert stats["rate/0"] == pytest.approx(hard[:, 0].mean().item())
    assert 0 < stats["known_frac"] < 1


def test_gradient_through_router_logits_matches_manual_chain_rule():
    P, S, tau, lam = 8, 2, 0.8, 0.3
    logits = torch.randn(P, S, 2, requires_grad=True)
    q = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    losses = torch.rand(P, S)
    alpha = straight_through_route(logits, tau, _gen(3))
    loss, _ = router_objective(alpha, losses, q, lambda1=lam)
    loss.backward()
    # manual: y = softmax((l + g) / tau); d y_on / d l_on = y_on y_off / tau = -d y_on / d l_off
    soft = straight_through_route(logits.detach(), tau, _gen(3), hard=False)
    hard = straight_through_route(logits.detach(), tau, _gen(3))
    abar = torch.stack([hard[q == k].mean() for k in (0, 1)]).clamp(1e-6, 1 - 1e-6)
    dh_dabar = torch.log((1 - abar) / abar)  # derivative of the binary entropy
    d_alpha = losses / P - lam * (dh_dabar[q] / (4 * S) / 2)[:, None]  # /2: mean over 2 questions
    d_on = d_alpha * soft * (1 - soft) / tau
    assert torch.allclose(logits.grad[..., 1], d_on, atol=1e-6)
    assert torch.allclose(logits.grad[..., 0], -d_on, atol=1e-6)


def test_router_parameters_get_gradient_and_equal_losses_give_none():
    torch.manual_seed(0)
    router = Router(16, 2, hidden=32)
    h = torch.randn(12, 16)
    q = torch.arange(12) // 3
    alpha = straight_through_route(router(h), 1.0, _gen())
    loss, _ = router_objective(alpha, torch.rand(12, 2), q, lambda1=0.0)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in router.parameters())
    # Equal losses everywhere and no entropy: moving a path between students changes nothing, but
    # the ST gradient still says "route less" (d/d soft = c/P > 0) — the routed-loss term alone would
    # collapse routing to nothing, which is why ensure_one and the entropy term exist. What must
    # hold: every on-logit is pushed down by the same per-path amount times y(1-y).
    router.zero_grad()
    logits = router(h)
    logits.retain_grad()
    alpha = straight_through_route(logits, 1.0, _gen())
    router_objective(alpha, torch.full((12, 2), 2.0), q, lambda1=0.0)[0].backward()
    soft = straight_through_route(logits.detach(), 1.0, _gen(), hard=False)
    assert torch.allclose(logits.grad[..., 1], 2.0 / 12 * soft * (1 - soft), atol=1e-7)


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


def _train_router_on_styles(lambda1: float, per_student: bool, steps: int = 300) -> tuple[torch.Tensor, float]:
    """Six styles, two students; student 0 is bad on style 2. Returns rates [style, student], final abar."""
    torch.manual_seed(0)
    styles, S, P = 6, 2, 96
    router = Router(in_dim=styles + 4, n_students=S, hidden=32)
    opt = torch.optim.Adam(router.parameters(), lr=3e-3)
    gen = _gen(1)

    def batch():
        style = torch.arange(P) % styles
        h = torch.cat([torch.nn.functional.one_hot(style, styles).float(), torch.randn(P, 4)], 1)
        h[:, :styles] += 0.1 * torch.randn(P, styles)
        losses = 1.0 + 0.1 * torch.randn(P, S)
        losses[style == 2, 0] += 1.5  # student 0 does badly on style 2
        return h, losses, style, torch.arange(P) // styles  # each question has one path per style

    for _ in range(steps):
        h, losses, _, q = batch()
        # ensure_one off: with S=2 it would pin abar >= 1/2 and the entropy could only push down
        alpha = straight_through_route(router(h), 1.0, gen, ensure_one=False)
        loss, stats = router_objective(alpha, losses, q, lambda1=lambda1, per_student=per_student)
        opt.zero_grad()
        loss.backward()
        opt.step()
    h, _, style, _ = batch()
    with torch.no_grad():
        probs = route_probs(router(h))
    rates = torch.stack([probs[style == k].mean(0) for k in range(styles)])
    return rates, (stats["rate/0"] + stats["rate/1"]) / 2


def test_router_steers_a_style_away_from_a_bad_student_paper_entropy():
    """eq. 3-4 as written. Every path loss is positive, so the routed-loss term alone says "route
    less"; the entropy holds the overall rate up (equilibrium log((1-abar)/abar) ~ S*loss/lambda1)
    and the loss gap decides who gets style 2. Which student takes the other styles is left free:
    eq. 3 pools the students, so one student taking everything is as good as a split."""
    rates, abar = _train_router_on_styles(lambda1=8.0, per_student=False)
    assert rates[2, 0] < rates[2, 1] - 0.5, rates
    assert 0.3 < abar < 0.7, "the entropy keeps routing away from all-off"
    collapsed, abar0 = _train_router_on_styles(lambda1=0.0, per_student=False, steps=100)
    assert abar0 < 0.05 and collapsed.max() < 0.05, "without the entropy, positive losses route nothing"


def test_router_steers_a_style_away_and_keeps_others_balanced_per_student_entropy():
    rates, _ = _train_router_on_styles(lambda1=4.0, per_student=True)
    assert rates[2, 0] < rates[2, 1] - 0.4, rates
    for k in (0, 1, 3, 4, 5):
        assert abs(rates[k, 0] - rates[k, 1]) < 0.2, (k, rates)
        assert rates[k].min() > 0.3, (k, rates)
