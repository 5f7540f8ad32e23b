"""Kernel time and peak memory vs the pure-torch references (and Liger-Kernel when importable).

Each row is one forward+backward. On CUDA "ours" is the Triton path; on CPU it is the torch
chunked fallback (the Triton interpreter is for correctness, its timings mean nothing). Peak memory
is measured on CUDA only; everywhere, largest_tensor_MiB is the biggest tensor any torch op returned
(the [N x V] logits for the reference), a memory proxy that CPU can measure. Also measures the torch ensemble + mutual-MSE loss to decide
whether fusing it would pay (see benchmarks/README.md).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from common import base_argparser, claim_results, markdown_table, plot_bars, resolve_size, save_results, timeit
from qr_ds.kernels import (
    fused_linear_cross_entropy,
    reference_linear_cross_entropy,
    reference_span_pool_project,
    span_pool_project,
    triton_available,
)

CE_SHAPES = {  # name: (N tokens, H, V)
    "toy": {"llama-like V=8k": (512, 256, 8192), "gemma-like V=32k": (512, 192, 32000)},
    "full": {"mistral V=32768": (8 * 768, 4096, 32768), "gemma-3 V=262144 (H of Gemma-7B)": (8 * 768, 3072, 262144)},
}
# Toy sizes fit one default chunk; 128 rows keeps the chunk/N ratio of the full Gemma shape (512/6144).
CE_CHUNK = {"toy": 128, "full": None}
POOL_SHAPES = {"toy": (2, 128, 256, 16, 64), "full": (8, 768, 4096, 64, 256)}  # B, T, H, M, D
ENSEMBLE_SHAPE = (2, 8, 64, 256)  # S students, P paths, M spans, D: the realistic size of one batch


class LargestTensor(TorchDispatchMode):
    """Records the size of the largest tensor any torch op returns while active."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.bytes = max(self.bytes, t.numel() * t.element_size())
        return out


def measure(label: str, kernel: str, fn: Callable[[], None], device: str, iters: int) -> dict:
    with LargestTensor() as largest:
        fn()
    sync = torch.cuda.synchronize if device == "cuda" else None
    peak = None
    if device == "cuda":
        fn()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    seconds = timeit(fn, warmup=1, iters=iters, sync=sync)
    return {"kernel": kernel, "impl": label, "ms": seconds * 1e3, "largest_tensor_MiB": largest.bytes / 2**20,
            "extra_peak_MiB": round(peak, 1) if peak is not None else "n/a (CPU)"}


def liger_ce() -> Callable | None:
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    return LigerFusedLinearCrossEntropyLoss()


def bench_ce(size: str, device: str, iters: int) -> list[dict]:
    rows = []
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    chunk = CE_CHUNK[size]
    ours = "ours (triton)" if device == "cuda" and triton_available() else "ours (torch chunked)"
    ours += f", chunk={chunk or 'default'}"
    liger = liger_ce() if device == "cuda" else None
    for name, (n, h, v) in CE_SHAPES[size].items():
        torch.manual_seed(0)
        hidden = torch.randn(n, h, device=device, dtype=dtype, requires_grad=True)
        weight = torch.randn(v, h, device=device, dtype=dtype) * 0.02  # frozen lm_head, as with LoRA
        labels = torch.randint(0, v, (n,), device=device)
        labels[: n // 4] = -100  # prompt tokens carry no loss

        def step(loss_fn):
            def run():
                hidden.grad = None
                loss_fn().backward()
            return run

        variants = {
            "reference (logits + F.cross_entropy)": lambda: reference_linear_cross_entropy(hidden, weight, labels)[0],
            ours: lambda: fused_linear_cross_entropy(hidden, weight, labels, chunk_size=chunk,
                                              force_torch=device != "cuda")[0],
        }
        if liger is not None:
            variants["liger-kernel"] = lambda: liger(weight, hidden, labels)
        group = [measure(label, f"linear+CE {name}", step(fn), device, iters) for label, fn in variants.items()]
        best = min(group, key=lambda r: r["ms"])
        for r in group:
            r["fastest"] = "yes" if r is best else ""
        rows += group
    return rows


def bench_span_pool(size: str, device: str, iters: int) -> list[dict]:
    B, T, H, M, D = POOL_SHAPES[size]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    hidden = torch.randn(B, T, H, device=device, dtype=dtype, requires_grad=True)
    weight = torch.randn(D, H, device=device, dtype=dtype, requires_grad=True)
    span_ids = (torch.arange(T, device=device) * M // T).repeat(B, 1)
    span_ids[:, : T // 8] = -1  # the prompt is in no span

    def step(fn):
        def run():
            hidden.grad = weight.grad = None
            fn(hidden, span_ids, M, weight).float().square().sum().backward()
        return run

    name = f"span pool+project B={B} T={T} H={H} M={M} D={D}"
    rows = [measure("reference (one-hot bmm)", name, step(reference_span_pool_project), device, iters)]
    if device == "cuda" and triton_available():
        rows.append(measure("ours (triton)", name, step(span_pool_project), device, iters))
    return rows


def ensemble_mutual_mse(z: torch.Tensor, logits: torch.Tensor, routed: torch.Tensor, span_valid: torch.Tensor) -> torch.Tensor:
    """z [S,P,M,D], logits/routed [S,P], span_valid [P,M]: sum over co-routed paths of ||z_s - z_ens||^2."""
    gamma = torch.softmax(logits.masked_fill(~routed, float("-inf")), dim=0).nan_to_num(0.0)
    z_ens = (gamma[..., None, None] * z).sum(0, keepdim=True)
    co_routed = routed.sum(0) >= 2
    mask = routed[..., None] & co_routed[None, :, None] & span_valid[None]
    return ((z - z_ens).square().sum(-1) * mask).sum()


def bench_ensemble(device: str, iters: int) -> list[dict]:
    S, P, M, D = ENSEMBLE_SHAPE
    torch.manual_seed(0)
    z = torch.randn(S, P, M, D, device=device, requires_grad=True)
    logits = torch.randn(S, P, device=device, requires_grad=True)
    routed = torch.rand(S, P, device=device) < 0.7
    span_valid = torch.rand(P, M, device=device) < 0.8

    def run():
        z.grad = logits.grad = None
        ensemble_mutual_mse(z, logits, routed, span_valid).backward()

    return [measure("torch (unfused)", f"ensemble+mutual MSE S={S} P={P} M={M} D={D}", run, device, iters * 10)]


def main() -> None:
    p = base_argparser(__doc__.splitlines()[0], "bench_kernels")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads; 1 avoids oversubscription noise on a shared machine (CPU only)")
    args = p.parse_args()
    claim_results(args)
    torch.set_num_threads(args.threads)
    size = resolve_size(args)
    device = "cuda" if size == "full" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_kernels: --size full needs CUDA (GPU-only shapes); use --size toy on CPU")
    rows = bench_ce(size, device, args.iters) + bench_span_pool(size, device, args.iters) + bench_ensemble(device, args.iters)
    print(f"# kernels, {size} size on {device}\n")
    if device == "cpu":
        print("CPU: 'ours' is the torch chunked fallback; Triton timings and peak memory need CUDA.\n")
    if liger_ce() is None:
        print("liger-kernel not importable: no Liger rows.\n")
    print(markdown_table(rows, ["kernel", "impl", "ms", "largest_tensor_MiB", "extra_peak_MiB", "fastest"]))
    path = save_results(args.name, rows, {"size": size}, args.out)
    print(f"\nwrote {path}")
    if args.plot:
        labelled = [{**r, "label": f"{r['kernel']}: {r['impl']}"} for r in rows]
        print("plot:", plot_bars(path.with_suffix(".png"), labelled, "label", "ms", f"kernels fwd+bwd ms ({size}, {device})"))


if __name__ == "__main__":
    main()
