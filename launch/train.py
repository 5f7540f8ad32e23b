"""Entry point: `deepspeed [--hostfile H] [--num_gpus N] launch/train.py --config CONFIG [--resume] [key=value ...]`.

Also runs under torchrun. Overrides use dotted keys (``lambda2=0``, ``students.1.lr=1e-4``).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback


class Terminated(Exception):
    """The launcher is stopping this rank (another rank failed)."""


def _terminated(signum, frame):
    raise Terminated(f"stopped by signal {signum}, most likely because another rank failed")


def _report_dead_ranks(out_dir, wait_s: float = 3.0) -> None:
    """Name the rank that died. Its sockets close while it is still exiting, so poll briefly;
    the launcher waits 30 s after SIGTERM, which this rank ignores meanwhile."""
    from qr_ds.dist.health import dead_ranks

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    deadline = time.time() + wait_s
    while not (gone := dead_ranks(out_dir)) and time.time() < deadline:
        time.sleep(0.1)
    for r, pid in gone:
        print(f"[qr_ds] rank {r} (pid {pid}) is gone: it died first", file=sys.stderr, flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", required=True, help="training YAML (see docs/config-reference.md)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoints/latest")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the DeepSpeed launcher
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_args()

    import yaml

    from qr_ds.config import load_config, parse_override, to_dict
    from qr_ds.train.config import TrainConfig

    rank = os.environ.get("RANK", "0")
    signal.signal(signal.SIGTERM, _terminated)
    cfg = None
    try:
        cfg = load_config(TrainConfig, args.config, dict(parse_override(o) for o in args.overrides))
        from qr_ds.train.trainer import Trainer

        trainer = Trainer(cfg)
        if trainer.is_coord:
            cfg.output_dir.mkdir(parents=True, exist_ok=True)
            (cfg.output_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        trainer.fit(resume=args.resume)
    except Exception as e:  # name the rank, then leave at once: peers blocked in a collective must not wait on us
        print(f"[qr_ds] rank {rank} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        if cfg is not None:
            _report_dead_ranks(cfg.output_dir)
        if os.environ.get("QR_DS_TRACEBACK", "1") == "1":
            traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
