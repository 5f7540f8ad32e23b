"""Compile every Triton kernel for a GPU target without a GPU (Triton ships ptxas).

Catches what the CPU interpreter cannot: type errors in loop-carried values, constexpr scoping,
and register/shared-memory limits at the launch configurations we use. Run without TRITON_INTERPRET:
    python -m qr_ds.kernels.aot_check [--arch 90]
"""
from __future__ import annotations

import argparse
import os

COMMON_CE = {"stride_row": "i32", "labels_ptr": "*i64", "scale_ptr": "*fp32", "ce_ptr": "*fp32",
             "n_cols": "i32", "softcap": "fp32", "HAS_SOFTCAP": "constexpr", "BLOCK": "constexpr"}
SEGMENT = {"ids_ptr": "*i64", "inv_count_ptr": "*fp32", "T": "i32", "H": "i32", "n_spans": "i32"}


def compile_all(arch: int = 90, dtypes: tuple[str, ...] = ("bf16", "fp16", "fp32")) -> list[str]:
    """Compile each kernel variant to a cubin for sm_<arch>; returns one line per kernel compiled."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("aot_check: unset TRITON_INTERPRET (the interpreter replaces compiled kernels)")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import fused_linear_ce as ce
    from . import span_pool as sp

    jobs = []
    for dtype in (f"*{d}" for d in dtypes):
        for softcap in (False, True):
            jobs.append((ce._ce_grad_kernel, {"logits_ptr": dtype, **COMMON_CE},
                         {"HAS_SOFTCAP": softcap, "BLOCK": 4096}, 16))
        jobs.append((sp._segment_mean_fwd, {"hidden_ptr": dtype, "out_ptr": dtype, **SEGMENT, "BLOCK_T": "constexpr",
                                            "BLOCK_H": "constexpr"}, {"BLOCK_T": 32, "BLOCK_H": 256}, 4))
        jobs.append((sp._segment_mean_bwd, {"grad_out_ptr": dtype, "grad_hidden_ptr": dtype, **SEGMENT,
                                            "BLOCK_H": "constexpr"}, {"BLOCK_H": 256}, 4))
    done = []
    for fn, signature, constexprs, num_warps in jobs:
        ordered = {name: signature[name] for name in fn.arg_names}  # the kernel's own argument order
        triton.compile(ASTSource(fn=fn, signature=ordered, constexprs=constexprs),
                       target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
        done.append(f"{fn.__name__} {ordered[fn.arg_names[0]]} {constexprs} num_warps={num_warps}: sm_{arch} cubin ok")
    return done


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for H100/H200, 80 for A100")
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp16", "fp32"], choices=["bf16", "fp16", "fp32"])
    args = p.parse_args()
    for line in compile_all(args.arch, tuple(args.dtypes)):
        print(line)


if __name__ == "__main__":
    main()
