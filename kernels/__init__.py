"""Fused kernels for the student step: linear+cross-entropy, span pooling, and the LM loss built on them.

Each kernel has a pure-torch reference (``reference_*``), a Triton path (CUDA, or CPU under
TRITON_INTERPRET=1) and a torch fallback used when Triton cannot run.
"""
from ._triton import triton_available
from .checkpointing import selective_checkpointing
from .fused_linear_ce import IGNORE_INDEX, fused_linear_cross_entropy, reference_linear_cross_entropy
from .lm_loss import causal_lm_loss
from .span_pool import reference_span_mean_pool, reference_span_pool_project, span_mean_pool, span_pool_project

__all__ = [
    "IGNORE_INDEX",
    "causal_lm_loss",
    "fused_linear_cross_entropy",
    "reference_linear_cross_entropy",
    "reference_span_mean_pool",
    "reference_span_pool_project",
    "selective_checkpointing",
    "span_mean_pool",
    "span_pool_project",
    "triton_available",
]
