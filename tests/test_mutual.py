"""Mutual-student distillation (paper eq. 5-8): loss value, per-student gradients, heads."""
from __future__ import annotations

import pytest
import torch

from qr_ds.mutual import MutualHead, MutualInputs, competence_weights, mutual_loss, mutual_loss_for_student

FORMS = ["anchored", "paper"]


def naive_mutual_loss(z, logits, routed, span_mask, n_paths):
    """eq. 6-8 with plain loops: co-routed paths only, softmax over the routed students."""
    S, P = logits.shape
    total = torch.zeros((), dtype=torch.float64)
    for p in range(P):
        students = [s for s in range(S) if routed[s, p]]
        if len(students) < 2:
            continue
        gamma = torch.softmax(torch.stack([logits[s, p] for s in students]).double(), dim=0)
        z_ens = sum(g * z[s, p].double() for g, s in zip(gamma, students))
        valid = [m for m in range(span_mask.shape[1]) if span_mask[p, m]]
        for s in students:
            if valid:
                total = total + sum(((z[s, p, m].double() - z_ens[m]) ** 2).sum() for m in valid) / len(valid)
    return total / n_paths


def naive_anchored_loss(z, logits, routed, span_mask, n_paths, nats):
    """The anchored form with plain loops: centre each student's valid span states (over the
    co-routed paths it was routed), unit-normalise, pull to the detached gamma-ensemble; plus the
    cross-entropy from gamma to softmax(-nats) over the co-routed students."""
    S, P = logits.shape
    co = [p for p in range(P) if routed[:, p].sum() >= 2]
    zc = z.double().clone()
    for s in range(S):
        cells = [(p, m) for p in co if routed[s, p] for m in range(span_mask.shape[1]) if span_mask[p, m]]
        if cells:
            mean = sum(z[s, p, m].double() for p, m in cells) / len(cells)
            for p, m in cells:
                v = z[s, p, m].double() - mean
                zc[s, p, m] = v / max(v.norm().item(), 1e-12)
    total = torch.zeros((), dtype=torch.float64)
    for p in co:
        students = [s for s in range(S) if routed[s, p]]
        gamma = torch.softmax(torch.stack([logits[s, p] for s in students]).double(), dim=0)
        target = torch.softmax(torch.stack([-nats[s, p] for s in students]).double(), dim=0)
        total = total - (target * gamma.log()).sum()
        valid = [m for m in range(span_mask.shape[1]) if span_mask[p, m]]
        ens = {m: sum(g * zc[s, p, m] for g, s in zip(gamma, students)) for m in valid}
        for s in students:
            if valid:
                total = total + sum(((zc[s, p, m] - ens[m]) ** 2).sum() for m in valid) / len(valid)
    return total / n_paths


def pool_spans(hidden: torch.Tensor, span_ids: torch.Tensor, n_spans: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference span mean pooling (qr_ds.kernels.span_mean_pool is the real one): hidden [P, T, H],
    span_ids [P, T] with -1 outside spans -> pooled [P, M, H], mask [P, M]."""
    P, T, H = hidden.shape
    onehot = (span_ids[..., None] == torch.arange(n_spans)).to(hidden.dtype)  # [P, T, M]
    count = onehot.sum(dim=1)  # [P, M]
    pooled = torch.einsum("ptm,pth->pmh", onehot, hidden) / count.clamp(min=1)[..., None]
    return pooled, count > 0


def _case(S: int, P: int = 7, M: int = 5, D: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(S, P, M, D, generator=g)
    logits = torch.randn(S, P, generator=g)
    routed = torch.rand(S, P, generator=g) > 0.4
    routed[:, 0] = True  # co-routed to everyone
    routed[:, 1] = False  # nobody
    routed[0, 2], routed[1:, 2] = True, False  # a single student: not co-routed
    routed[0, 3], routed[1, 3] = True, True
    span_mask = torch.rand(P, M, generator=g) > 0.3
    span_mask[:, 0] = True
    span_mask[0, 1:] = False  # path 0 has a single valid span
    return z, logits, routed, span_mask


def _nats(S, P, seed=0):
    return 40 * torch.rand(S, P, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("S", [2, 3])
def test_paper_form_matches_naive_eq_6_8(S):
    z, logits, routed, span_mask = _case(S)
    got = mutual_loss(z, logits, routed, span_mask, n_paths=11, form="paper")
    assert got.item() > 0
    assert got.item() == pytest.approx(naive_mutual_loss(z, logits, routed, span_mask, 11).item(), rel=1e-5)


@pytest.mark.parametrize("S", [2, 3])
def test_anchored_form_matches_naive_loops(S):
    z, logits, routed, span_mask = _case(S)
    nats = _nats(S, z.shape[1])
    got = mutual_loss(z, logits, routed, span_mask, 11, "anchored", nats)
    assert got.item() == pytest.approx(naive_anchored_loss(z, logits, routed, span_mask, 11, nats).item(), rel=1e-5)


def test_scaling_or_shifting_states_cannot_lower_the_anchored_loss_but_lowers_the_paper_one():
    z, logits, routed, span_mask = _case(3)
    nats = _nats(3, z.shape[1])
    anchored = mutual_loss(z, logits, routed, span_mask, 7, "anchored", nats)
    for z2 in (0.1 * z, 10 * z, z + 5.0):
        assert torch.allclose(mutual_loss(z2, logits, routed, span_mask, 7, "anchored", nats), anchored, atol=1e-5)
    paper = mutual_loss(z, logits, routed, span_mask, 7, "paper")
    assert mutual_loss(0.1 * z, logits, routed, span_mask, 7, "paper").item() == pytest.approx(0.01 * paper.item())


def test_competence_learns_from_evidence_in_anchored_form_and_drifts_to_uniform_in_paper_form():
    """Gradient descent on the logits alone: student 0 explains every path better (fewer nats).
    Anchored, gamma_0 rises towards the evidence; paper, it is pulled towards 1/2 from either side."""
    z, _, routed, span_mask = _case(2, P=16, seed=3)
    routed[:] = True
    nats = torch.stack([torch.full((16,), 10.0), torch.full((16,), 14.0)])
    for form, start, check in (("anchored", 0.0, lambda g: g > 0.9), ("paper", 2.0, lambda g: abs(g - 0.5) < 0.1)):
        logits = torch.stack([torch.full((16,), start), torch.zeros(16)]).requires_grad_()
        opt = torch.optim.SGD([logits], lr=5.0)
        for _ in range(200):
            opt.zero_grad()
            mutual_loss(z, logits, routed, span_mask, 16, form, nats).backward()
            opt.step()
        gamma0 = competence_weights(logits.detach(), routed)[0].mean().item()
        assert check(gamma0), (form, gamma0)


def test_anchored_form_needs_nats_and_forms_are_named():
    z, logits, routed, span_mask = _case(2)
    with pytest.raises(ValueError, match="path_nats"):
        mutual_loss(z, logits, routed, span_mask, 7)
    with pytest.raises(ValueError, match="anchored"):
        mutual_loss(z, logits, routed, span_mask, 7, "eq8")


@pytest.mark.parametrize("form", FORMS)
def test_masked_spans_and_unrouted_students_do_not_matter(form):
    z, logits, routed, span_mask = _case(3)
    nats = _nats(3, z.shape[1])
    base = mutual_loss(z, logits, routed, span_mask, 7, form, nats)
    z2, logits2, nats2 = z.clone(), logits.clone(), nats.clone()
    z2[:, ~span_mask] = 1e4  # garbage in masked spans
    z2[~routed] = float("nan")  # and NaN from students the path was not routed to
    logits2[~routed] = 1e4
    nats2[~routed] = float("nan")
    assert torch.allclose(mutual_loss(z2, logits2, routed, span_mask, 7, form, nats2), base)


@pytest.mark.parametrize("form", FORMS)
def test_zero_with_graph_when_nothing_is_co_routed(form):
    z, logits, _, span_mask = _case(2)
    z.requires_grad_()
    routed = torch.zeros(2, z.shape[1], dtype=torch.bool)
    routed[0] = True  # everything routed to student 0 alone
    loss = mutual_loss(z, logits, routed, span_mask, 7, form, _nats(2, z.shape[1]))
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()
    assert z.grad.abs().sum() == 0


def test_paper_form_shards_add_up_to_the_batch_loss():
    """(The anchored form centres states per chunk, as the trainer computes it, so its chunks are
    separate terms by definition.)"""
    z, logits, routed, span_mask = _case(2, P=8)
    whole = mutual_loss(z, logits, routed, span_mask, 8, "paper")
    halves = sum(mutual_loss(z[:, sl], logits[:, sl], routed[:, sl], span_mask[sl], 8, "paper")
                 for sl in (slice(0, 4), slice(4, 8)))
    assert torch.allclose(whole, halves)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("S", [2, 3])
def test_per_student_backward_equals_joint_backward_through_heads(S, form):
    torch.manual_seed(S)
    P, T, M, D = 6, 12, 4, 5
    hidden_sizes = [8, 6, 10][:S]  # students have different hidden sizes
    heads = [MutualHead(h, D) for h in hidden_sizes]
    hiddens = [torch.randn(P, T, h, requires_grad=True) for h in hidden_sizes]
    # each student tokenizes differently: its own span ids over its own tokens
    span_ids = [torch.randint(-1, M, (P, T)) for _ in range(S)]
    _, _, routed, _ = _case(S, P=P, M=M, D=D, seed=S)
    # a span is valid where every student has tokens in it (as align() guarantees for real spans)
    span_mask = torch.stack([pool_spans(hiddens[s].detach(), span_ids[s], M)[1] for s in range(S)]).all(0)
    span_mask[:, -1] = False  # a padded span slot

    def forward(s):
        pooled, _ = pool_spans(hiddens[s], span_ids[s], M)
        return heads[s](pooled, span_mask)

    # joint: one graph through every student
    outs = [forward(s) for s in range(S)]
    nats = _nats(S, P, seed=S)
    joint = mutual_loss(torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs]), routed, span_mask, P,
                        form, nats)
    joint.backward()
    ref = [[p.grad.clone() for p in heads[s].parameters()] + [hiddens[s].grad.clone()] for s in range(S)]
    assert all(g.abs().sum() > 0 for grads in ref for g in grads)
    for s in range(S):
        heads[s].zero_grad()
        hiddens[s].grad = None

    # per student: all-gather stand-in (detached copies), then each student's own backward
    outs = [forward(s) for s in range(S)]
    all_z = torch.stack([o[0].detach() for o in outs])
    all_logits = torch.stack([o[1].detach() for o in outs])
    for s in range(S):
        own = mutual_loss_for_student(s, outs[s][0], outs[s][1], MutualInputs(all_z, all_logits, routed, span_mask, P,
                                                                              form, nats))
        assert torch.allclose(own, joint), "every student sees the full loss value"
        own.backward()
    for s in range(S):
        got = [p.grad for p in heads[s].parameters()] + [hiddens[s].grad]
        for g, r in zip(got, ref[s]):
            assert torch.allclose(g, r, atol=1e-6), (s, (g - r).abs().max())


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("S", [2, 3])
def test_per_student_gradients_equal_joint_gradients_wrt_z_and_logits(S, form):
    z, logits, routed, span_mask = _case(S, seed=10 + S)
    nats = _nats(S, z.shape[1], seed=S)
    zj, lj = z.clone().requires_grad_(), logits.clone().requires_grad_()
    mutual_loss(zj, lj, routed, span_mask, 7, form, nats).backward()
    for s in range(S):
        own_z, own_l = z[s].clone().requires_grad_(), logits[s].clone().requires_grad_()
        mutual_loss_for_student(s, own_z, own_l, MutualInputs(z, logits, routed, span_mask, 7, form, nats)).backward()
        assert torch.allclose(own_z.grad, zj.grad[s], atol=1e-6)
        assert torch.allclose(own_l.grad, lj.grad[s], atol=1e-6)
    assert lj.grad.abs().sum() > 0, "the competence logits learn through gamma"


def test_head_shapes_mean_over_valid_spans_and_input_checks():
    head = MutualHead(hidden_size=6, shared_dim=3)
    pooled = torch.randn(2, 4, 6)
    mask = torch.tensor([[True, True, False, False], [True, False, False, False]])
    z, logit = head(pooled, mask)
    assert z.shape == (2, 4, 3) and logit.shape == (2,)
    assert torch.allclose(logit[0], head.competence(z[0, :2].mean(0)).squeeze())
    assert torch.allclose(logit[1], head.competence(z[1, 0]).squeeze())
    with pytest.raises(ValueError, match="span_mask"):
        head(pooled, mask[:, :3])
    with pytest.raises(ValueError, match="student index 2"):
        mutual_loss_for_student(2, z, logit, MutualInputs(z[None].expand(2, -1, -1, -1), logit[None].expand(2, -1),
                                                          torch.ones(2, 2, dtype=torch.bool), mask, 2))
