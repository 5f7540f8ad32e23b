"""Fused lm_head projection + cross-entropy that never materializes the [N x V] logits.

Tokens are processed in chunks: for each chunk the logits are projected with a torch matmul,
a Triton kernel (online softmax over the vocab) turns them in place into d(loss)/d(logits), and
two more matmuls give the chunk's grad wrt hidden and weight. Gradients are thus computed in the
forward pass and only scaled by the upstream grad in backward (the Liger-Kernel scheme), so the
peak extra memory is one [chunk x V] buffer instead of several [N x V] ones.

loss = sum_t w_t * ce_t over non-ignored tokens; w = 1 / n_valid (the mean) when no weights are given.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._triton import tl, triton, use_triton

IGNORE_INDEX = -100
# The logits chunk is the one big temporary: keep it near this many bytes.
CHUNK_BYTES = 256 * 2**20


def reference_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    token_weights: torch.Tensor | None = None,
    softcap: float | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain logits + F.cross_entropy: the numerics the fused versions must reproduce."""
    logits = (hidden @ weight.t()).float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    ce = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
    valid = labels != ignore_index
    scale = _token_scale(labels, token_weights, ignore_index)
    return (ce * scale).sum(), (ce * valid).detach()


def _token_scale(labels: torch.Tensor, token_weights: torch.Tensor | None, ignore_index: int) -> torch.Tensor:
    valid = (labels != ignore_index).float()
    if token_weights is None:
        return valid / valid.sum().clamp(min=1)
    return token_weights.float() * valid


if triton is not None:

    @triton.jit
    def _tanh(x):
        # 1 - 2/(e^2x + 1) saturates to +-1 without overflow issues (inf -> 1, 0 -> -1).
        return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)

    @triton.jit
    def _ce_grad_kernel(
        logits_ptr, stride_row, labels_ptr, scale_ptr, ce_ptr, n_cols, softcap,
        HAS_SOFTCAP: tl.constexpr, BLOCK: tl.constexpr,
    ):
        """One row: ce = lse - x[label]; logits row overwritten with scale * (softmax - onehot)."""
        row = tl.program_id(0).to(tl.int64)
        ptr = logits_ptr + row * stride_row
        label = tl.load(labels_ptr + row)
        scale = tl.load(scale_ptr + row)
        # Pass 1: online max / sum-exp over the vocab in blocks, fp32.
        m = -float("inf")
        d = 0.0
        target = 0.0
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < n_cols
            x = tl.load(ptr + cols, mask=mask, other=-float("inf")).to(tl.float32)
            if HAS_SOFTCAP:
                x = tl.where(mask, softcap * _tanh(x / softcap), -float("inf"))
            target += tl.sum(tl.where(cols == label, x, 0.0))
            m_new = tl.maximum(m, tl.max(x))
            d = d * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new))
            m = m_new
        lse = m + tl.log(d)
        # An ignored label (-100) never matches a column; its scale is 0 and its ce is zeroed here.
        valid = (label >= 0).to(tl.float32)
        tl.store(ce_ptr + row, (lse - target) * valid)
        # Pass 2: gradient of the scaled loss wrt the raw logits, written in place.
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < n_cols
            x = tl.load(ptr + cols, mask=mask, other=0.0).to(tl.float32)
            dcap = 1.0
            if HAS_SOFTCAP:
                t = _tanh(x / softcap)
                x = softcap * t
                dcap = 1.0 - t * t  # d(softcap * tanh(raw / softcap)) / d raw
            g = (tl.exp(x - lse) - tl.where(cols == label, 1.0, 0.0)) * dcap
            tl.store(ptr + cols, (g * scale).to(logits_ptr.dtype.element_ty), mask=mask)


def _ce_grad_triton(logits: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor, softcap: float | None) -> torch.Tensor:
    n_rows, n_cols = logits.shape
    ce = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
    # Interpreter: one wide block is fastest; GPU: 4096 columns per step keeps registers in check.
    block = min(triton.next_power_of_2(n_cols), 4096 if logits.is_cuda else 65536)
    _ce_grad_kernel[(n_rows,)](
        logits, logits.stride(0), labels, scale, ce, n_cols, float(softcap or 1.0),
        HAS_SOFTCAP=softcap is not None, BLOCK=block, num_warps=16 if block >= 4096 else 4,
    )
    return ce


def _ce_grad_torch(logits: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Same contract as the Triton kernel: returns ce, overwrites logits with the scaled grad."""
    x = logits.float()
    if softcap is not None:
        t = torch.tanh(x / softcap)
        x = softcap * t
    lse = torch.logsumexp(x, dim=-1)
    valid = labels >= 0
    safe = labels.clamp(min=0)
    ce = (lse - x.gather(1, safe[:, None]).squeeze(1)) * valid
    g = torch.softmax(x, dim=-1)
    g[torch.arange(len(labels), device=labels.device), safe] -= valid.float()
    if softcap is not None:
        g *= 1.0 - t * t
    logits.copy_(g * scale[:, None])
    return ce


def default_chunk_size(n_tokens: int, vocab: int, elem_bytes: int) -> int:
    rows = max(CHUNK_BYTES // (vocab * elem_bytes), 16)
    return min(1 << (rows.bit_length() - 1), max(n_tokens, 1))


class FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, token_weights, chunk_size, softcap, ignore_index, triton_ok, grad_enabled):
        n_tokens = hidden.shape[0]
        labels = torch.where(labels == ignore_index, torch.full_like(labels, -1), labels).contiguous()
        scale = _token_scale(labels, token_weights, -1).contiguous()
        need_h, need_w = grad_enabled and hidden.requires_grad, grad_enabled and weight.requires_grad
        grad_hidden = torch.empty_like(hidden) if need_h else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        per_token = torch.empty(n_tokens, dtype=torch.float32, device=hidden.device)
        chunk = chunk_size or default_chunk_size(n_tokens, weight.shape[0], hidden.element_size())
        ce_grad = _ce_grad_triton if triton_ok else _ce_grad_torch
        for start in range(0, n_tokens, chunk):
            end = min(start + chunk, n_tokens)
            h = hidden[start:end]
            logits = h @ weight.t()  # in the input dtype; the kernel upcasts to fp32
            per_token[start:end] = ce_grad(logits, labels[start:end], scale[start:end], softcap)
            if need_h:
                torch.mm(logits, weight, out=grad_hidden[start:end])
            if need_w:
                grad_weight += (logits.t() @ h).float()
        loss = (per_token * scale).sum()
        ctx.save_for_backward(grad_hidden, grad_weight, per_token if _needs_grad(token_weights) else None)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(per_token)
        return loss, per_token

    @staticmethod
    def backward(ctx, grad_loss, _grad_per_token):
        grad_hidden, grad_weight, per_token = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_loss.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_loss).to(ctx.weight_dtype)
        # d loss / d w_t = ce_t: lets a router learn from the students' losses.
        grad_tw = per_token * grad_loss if per_token is not None else None
        return grad_hidden, grad_weight, None, grad_tw, None, None, None, None, None


def _needs_grad(t: torch.Tensor | None) -> bool:
    return t is not None and t.requires_grad


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    token_weights: torch.Tensor | None = None,
    chunk_size: int | None = None,
    softcap: float | None = None,
    ignore_index: int = IGNORE_INDEX,
    force_torch: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, per_token_ce): hidden [N,H], weight [V,H], labels [N], token_weights [N] or None.

    per_token_ce is fp32, detached, 0 at ignored tokens. Uses the Triton kernel when Triton can
    run (CUDA, or TRITON_INTERPRET=1) unless force_torch; otherwise the same chunked algorithm in torch.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"fused_linear_cross_entropy: hidden {tuple(hidden.shape)} and weight "
                         f"{tuple(weight.shape)} must be [N,H] and [V,H]")
    if labels.shape != hidden.shape[:1]:
        raise ValueError(f"fused_linear_cross_entropy: labels {tuple(labels.shape)} must be [{hidden.shape[0]}]")
    if token_weights is not None and token_weights.shape != labels.shape:
        raise ValueError(f"fused_linear_cross_entropy: token_weights {tuple(token_weights.shape)} "
                         f"must match labels {tuple(labels.shape)}")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"fused_linear_cross_entropy: hidden dtype {hidden.dtype} != weight dtype {weight.dtype}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"fused_linear_cross_entropy: chunk_size={chunk_size} must be >= 1")
    triton_ok = not force_torch and use_triton(hidden)
    return FusedLinearCrossEntropy.apply(
        hidden.contiguous(), weight, labels, token_weights, chunk_size, softcap, ignore_index, triton_ok,
        torch.is_grad_enabled(),  # under no_grad (eval) skip the gradient matmuls
    )
