"""Waiting for every rank without a collective timeout.

Ranks can reach the first collective minutes apart (one node prepared the training data, another
reused it); a collective would time out after ``collective_timeout_s``. Here each rank counts
itself in on the rendezvous store and polls it, saying who it still waits for.
"""
from __future__ import annotations

import sys
import time


def wait_for_all_ranks(name: str, poll_s: float = 0.2, say_every_s: float = 30.0) -> None:
    """Return once every rank has called this with ``name``; a no-op outside torch.distributed.
    A dead peer's launcher ends this one (torchrun's agent) or the store goes away, which raises."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return
    from torch.distributed.distributed_c10d import _get_default_store

    store, world, rank = _get_default_store(), dist.get_world_size(), dist.get_rank()
    key = f"qr_ds/ready/{name}"
    store.set(f"{key}/{rank}", "1")
    arrived = store.add(key, 1)
    t0 = said = time.time()
    while arrived < world:
        if time.time() - said >= say_every_s:
            missing = [r for r in range(world) if not store.check([f"{key}/{r}"])]
            print(f"[qr_ds] rank {rank} waiting {time.time() - t0:.0f} s for rank(s) {missing} to finish {name}",
                  file=sys.stderr, flush=True)
            said = time.time()
        time.sleep(poll_s)
        arrived = store.add(key, 0)
