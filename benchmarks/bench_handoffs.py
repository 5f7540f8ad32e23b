"""The timings tests no longer assert (issue 37): how long the trainer waits when it hands a checkpoint
to the background evaluator, and how long `qr-ds embed` takes on a pool holding one ~10 MB path.

The tests check these by events and counts (submit returns while its evaluation is held; the text
that reaches the encoder is cut); the seconds are measured here. Each row is the median of --iters runs.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from common import base_argparser, claim_results, markdown_table, save_results


def submit_rows(root: Path, iters: int) -> list[dict]:
    """Three submits as the trainer makes them: one starts a process, one queues, one supersedes it."""
    from qr_ds.tasks import write_synthetic
    from qr_ds.train.config import EvalDuringTraining
    from qr_ds.train.evaluator import BackgroundEvaluator

    data = root / "dev.jsonl"
    write_synthetic(data, 2, seed=0)
    cfg = EvalDuringTraining(every_steps=1, tasks={"synthetic": str(data)}, backend="hf")
    times = []
    for i in range(iters):
        ev = BackgroundEvaluator(cfg, root / f"evals{i}", log=lambda m: None)
        t = time.perf_counter()
        for step in (1, 2, 3):  # no checkpoint there: the process fails later, which submit never waits for
            ev.submit(root / "ckpt", step)
        times.append(time.perf_counter() - t)
        ev.close(wait=False)
    return [{"case": "3 x BackgroundEvaluator.submit", "median_s": statistics.median(times),
             "max_s": max(times), "iters": iters}]


def embed_rows(root: Path, iters: int) -> list[dict]:
    from qr_ds.config import from_dict
    from qr_ds.data.pool import PathRecord, write_pool
    from qr_ds.embed.config import EmbedConfig
    from qr_ds.embed.encoder import Encoder
    from qr_ds.embed.run import run_embed

    huge = "Add 3 and 4 to get 7, then double it: 14. " * 250_000  # ~10.5 MB
    encoder = Encoder("default")
    times = []
    for i in range(iters):
        pool = root / f"pool{i}.jsonl"
        write_pool(pool, [PathRecord(id=f"q{k}/cot/0", task="synthetic", question_id=f"q{k}", question="?", gold="7",
                                     teacher="t", style="cot", sample=0, prompt="p", response=text)
                          for k, text in enumerate([huge, "short. The answer is 1."])])
        cfg = from_dict(EmbedConfig, {"pool": str(pool), "out": str(root / f"emb{i}.jsonl")})
        t = time.perf_counter()
        res = run_embed(cfg, encoder=encoder, progress=False)
        times.append(time.perf_counter() - t)
        assert res.capped == 1
    return [{"case": f"embed a pool with one {len(huge) / 1e6:.1f} MB path (cut to {encoder.max_chars} chars)",
             "median_s": statistics.median(times), "max_s": max(times), "iters": iters}]


def main() -> None:
    p = base_argparser(__doc__, results_name="handoffs")
    p.add_argument("--iters", type=int, default=3)
    args = p.parse_args()
    claim_results(args)
    with tempfile.TemporaryDirectory() as tmp:
        rows = submit_rows(Path(tmp), args.iters) + embed_rows(Path(tmp), args.iters)
    print(markdown_table(rows))
    print(f"wrote {save_results(args.name, rows, out_dir=args.out)}")


if __name__ == "__main__":
    main()
