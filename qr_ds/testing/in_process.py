"""The Trainer without a launcher: a world of one rank (gloo) in this process, every student colocated."""
from __future__ import annotations

import os
from contextlib import contextmanager

from qr_ds.testing.builders import _free_port


@contextmanager
def one_process_strategy(n_students: int):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0", DS_ACCELERATOR="cpu")
    from qr_ds.distributed.strategy import Strategy
    from qr_ds.distributed.topology import make_layout

    strat = Strategy(lambda ws: make_layout([1] * n_students, ws, "colocated"), backend="gloo", timeout_s=60)
    try:
        yield strat
    finally:
        strat.close()
