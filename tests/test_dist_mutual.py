"""The mutual loss computed across processes (all-gather in the cross-student group, each student
backpropagating its own live slice) equals the single-process eq. 5-8 and its gradients."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from qr_ds.mutual.loss import MutualInputs, mutual_loss, mutual_loss_for_student

S, P, M, D = 3, 4, 5, 6


def _tensors():
    g = torch.Generator().manual_seed(7)
    z = torch.randn(S, P, M, D, generator=g)
    logits = torch.randn(S, P, generator=g)
    routed = torch.rand(S, P, generator=g) > 0.3
    routed[:, 0] = True  # at least one path co-routed to everyone
    span_mask = torch.rand(P, M, generator=g) > 0.2
    span_mask[:, 0] = True
    nats = torch.rand(S, P, generator=g) * 10  # every student's path losses: the anchored form's evidence
    return z, logits, routed, span_mask, nats


def _worker(rank: int, port: int, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(S),
                      LOCAL_RANK=str(rank), DS_ACCELERATOR="cpu")
    from qr_ds.distributed.strategy import Strategy
    from qr_ds.distributed.topology import make_layout

    strat = Strategy(lambda ws: make_layout([1] * S, ws, "separate"), backend="gloo", timeout_s=60)
    z, logits, routed, span_mask, nats = _tensors()
    own_z = z[rank].clone().requires_grad_(True)
    own_logit = logits[rank].clone().requires_grad_(True)
    flat = strat.gather_chunk(0, {rank: torch.cat([own_z.reshape(-1), own_logit])})
    all_z = torch.stack([f[: P * M * D].view(P, M, D) for f in flat])
    all_logits = torch.stack([f[P * M * D:] for f in flat])
    loss = mutual_loss_for_student(rank, own_z, own_logit, MutualInputs(all_z, all_logits, routed, span_mask, P,
                                                                        path_nats=nats))
    loss.backward()
    torch.save({"loss": loss.detach(), "gz": own_z.grad, "gl": own_logit.grad}, f"{out}/rank{rank}.pt")
    strat.close()


@pytest.mark.slow
def test_distributed_mutual_loss_matches_single_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=S, join=True)

    z, logits, routed, span_mask, nats = _tensors()
    z.requires_grad_(True)
    logits.requires_grad_(True)
    joint = mutual_loss(z, logits, routed, span_mask, P, path_nats=nats)
    joint.backward()
    for r in range(S):
        got = torch.load(tmp_path / f"rank{r}.pt")
        torch.testing.assert_close(got["loss"], joint.detach())
        torch.testing.assert_close(got["gz"], z.grad[r])
        torch.testing.assert_close(got["gl"], logits.grad[r])
    assert z.grad.abs().sum() > 0
