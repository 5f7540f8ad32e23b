"""Optional Triton: kernels run on CUDA, or on CPU tensors under TRITON_INTERPRET=1 (tests)."""
from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs without triton use the torch fallbacks
    triton = None
    tl = None


# triton.jit reads TRITON_INTERPRET when our kernels are decorated, i.e. when this package is first
# imported: read it once here too, so the dispatch always matches how the kernels were built.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def triton_available() -> bool:
    """True when Triton kernels can run here: triton importable and (CUDA or TRITON_INTERPRET=1)."""
    return triton is not None and (torch.cuda.is_available() or INTERPRET)


def use_triton(t: torch.Tensor) -> bool:
    """Whether a kernel may take tensor ``t``: on CUDA, or any device under the interpreter."""
    return triton is not None and (t.is_cuda or INTERPRET)
