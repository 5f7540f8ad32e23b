"""Teacher-client throughput (requests/s, tokens/s) as concurrency grows, over loopback HTTP.

By default the server is StubChatServer with a fixed per-request latency: this measures the
client's concurrency machinery (semaphore, connection pool, record writing), not a model.
With --server-url it measures a real OpenAI-compatible server (e.g. `vllm serve`).
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import base_argparser, claim_results, markdown_table, plot_bars, save_results  # noqa: E402
from qr_ds.config import from_dict  # noqa: E402
from qr_ds.tasks import write_synthetic  # noqa: E402
from qr_ds.teacher.config import GenerateConfig  # noqa: E402
from qr_ds.teacher.generate import generate  # noqa: E402
from qr_ds.testing.stub_server import StubChatServer  # noqa: E402


def measure(url: str, model: str, concurrency: int, questions: int, max_tokens: int, work: Path) -> dict:
    data = work / "syn.jsonl"
    write_synthetic(data, questions, seed=0)
    out = work / f"pool-c{concurrency}.jsonl"
    cfg = from_dict(GenerateConfig, {
        "task": "synthetic", "data": str(data), "out": str(out),
        "teacher": {"backend": "openai", "model": model, "base_url": url, "concurrency": concurrency,
                    "sampling": {"max_tokens": max_tokens}}})
    t = time.perf_counter()
    stats = generate(cfg, progress=False)
    dt = time.perf_counter() - t
    return {"concurrency": concurrency, "requests": stats.requests, "failed": sum(stats.failures.values()),
            "seconds": round(dt, 3), "requests_per_s": stats.requests / dt,
            "tokens_out_per_s": stats.tokens_out / dt, "tokens_in_per_s": stats.tokens_in / dt}


def main() -> None:
    p = base_argparser(__doc__.splitlines()[0], "bench_generate")
    p.add_argument("--server-url", default=None, help="OpenAI-compatible base URL (default: loopback stub)")
    p.add_argument("--model", default="stub", help="model name to request (with --server-url)")
    p.add_argument("--latency", type=float, default=0.05, help="stub server's per-request latency, seconds")
    p.add_argument("--questions", type=int, default=16, help="questions (x6 styles = requests per point)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    args = p.parse_args()
    claim_results(args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.server_url:
            for c in args.concurrency:
                rows.append(measure(args.server_url, args.model, c, args.questions, args.max_tokens, Path(tmp)))
        else:
            with StubChatServer(latency_s=args.latency) as server:
                for c in args.concurrency:
                    rows.append(measure(server.url, "stub", c, args.questions, args.max_tokens, Path(tmp)))
    target = args.server_url or f"loopback stub server, {args.latency * 1000:.0f} ms per request (client concurrency, not a model)"
    print(f"# generate throughput vs concurrency\n\nserver: {target}\n")
    print(markdown_table(rows))
    path = save_results(args.name, rows, {"server": target}, args.out)
    if args.plot:
        plot_bars(path.with_suffix(".png"), rows, "concurrency", "requests_per_s", "generate: requests/s")
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
