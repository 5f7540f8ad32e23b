"""Span mean-pooling of hidden states, then a linear projection of each span's mean.

Mutual distillation compares students on spans (reasoning steps): each span's vector is the mean
of its tokens' hidden states, projected to a shared dimension. Projection is linear, so it is
applied after pooling ([B,M,H] @ [H,D]) rather than to every token ([B,T,H] @ [H,D]).
span_ids[b, t] = m puts token t of row b in span m; -1 leaves it out. Empty spans pool to zeros.
"""
from __future__ import annotations

import torch

from ._triton import tl, triton, use_triton


def reference_span_mean_pool(hidden: torch.Tensor, span_ids: torch.Tensor, n_spans: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot [B,M,T] membership matrix times hidden: simple, and the numerics to match."""
    member = (span_ids[:, None, :] == torch.arange(n_spans, device=span_ids.device)[None, :, None]).float()
    counts = member.sum(-1)
    pooled = (member @ hidden.float()) / counts.clamp(min=1)[..., None]
    return pooled.to(hidden.dtype), counts


def reference_span_pool_project(hidden, span_ids, n_spans, weight, bias=None) -> torch.Tensor:
    pooled, counts = reference_span_mean_pool(hidden, span_ids, n_spans)
    return _project(pooled, counts, weight, bias)


def _project(pooled: torch.Tensor, counts: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out = pooled @ weight.t()
    if bias is not None:
        out = out + bias
    return out * (counts > 0)[..., None].to(out.dtype)  # empty spans stay exactly zero, bias included


if triton is not None:

    @triton.jit
    def _segment_mean_fwd(
        hidden_ptr, ids_ptr, inv_count_ptr, out_ptr, T, H, n_spans,
        BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
    ):
        """Program (b*M + m, h-block): masked sum over the row's tokens in span m, times 1/count."""
        bm = tl.program_id(0).to(tl.int64)
        b = bm // n_spans
        m = bm % n_spans
        cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        col_mask = cols < H
        acc = tl.zeros((BLOCK_H,), dtype=tl.float32)
        for start in range(0, T, BLOCK_T):
            rows = start + tl.arange(0, BLOCK_T)
            ids = tl.load(ids_ptr + b * T + rows, mask=rows < T, other=-1)
            hit = ids == m
            # Masked-off tokens issue no memory traffic, so the scan reads hidden about once overall.
            h = tl.load(hidden_ptr + (b * T + rows)[:, None] * H + cols[None, :],
                        mask=hit[:, None] & col_mask[None, :], other=0.0)
            acc += tl.sum(h.to(tl.float32), axis=0)
        inv = tl.load(inv_count_ptr + bm)
        tl.store(out_ptr + bm * H + cols, (acc * inv).to(out_ptr.dtype.element_ty), mask=col_mask)

    @triton.jit
    def _segment_mean_bwd(
        grad_out_ptr, ids_ptr, inv_count_ptr, grad_hidden_ptr, T, H, n_spans,
        BLOCK_H: tl.constexpr,
    ):
        """Program (b*T + t, h-block): grad_hidden[b,t] = grad_pooled[b, span] / count (0 outside spans)."""
        bt = tl.program_id(0).to(tl.int64)
        b = bt // T
        cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        col_mask = cols < H
        sid = tl.load(ids_ptr + bt)
        inside = sid >= 0
        bm = b * n_spans + tl.where(inside, sid, 0)
        inv = tl.load(inv_count_ptr + bm) * inside.to(tl.float32)
        # bm is clamped to a real span, so the load is in bounds; inv is 0 for tokens outside spans.
        g = tl.load(grad_out_ptr + bm * H + cols, mask=col_mask, other=0.0).to(tl.float32)
        tl.store(grad_hidden_ptr + bt * H + cols, (g * inv).to(grad_hidden_ptr.dtype.element_ty), mask=col_mask)


def _block_h(h: int) -> int:
    return min(triton.next_power_of_2(h), 256)


class SpanMeanPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, span_ids, n_spans):
        B, T, H = hidden.shape
        counts = torch.zeros(B, n_spans + 1, dtype=torch.float32, device=hidden.device)
        # Tokens outside every span (-1) land in the spare last column, which is dropped.
        counts.scatter_add_(1, torch.where(span_ids < 0, n_spans, span_ids), torch.ones_like(span_ids, dtype=torch.float32))
        counts = counts[:, :n_spans].contiguous()
        inv_count = 1.0 / counts.clamp(min=1)
        pooled = torch.empty(B, n_spans, H, dtype=hidden.dtype, device=hidden.device)
        block_t = 32 if hidden.is_cuda else min(triton.next_power_of_2(T), 1024)
        _segment_mean_fwd[(B * n_spans, triton.cdiv(H, _block_h(H)))](
            hidden, span_ids, inv_count, pooled, T, H, n_spans, BLOCK_T=block_t, BLOCK_H=_block_h(H),
        )
        ctx.save_for_backward(span_ids, inv_count)
        ctx.mark_non_differentiable(counts)
        return pooled, counts

    @staticmethod
    def backward(ctx, grad_pooled, _grad_counts):
        span_ids, inv_count = ctx.saved_tensors
        B, T = span_ids.shape
        H = grad_pooled.shape[-1]
        grad_hidden = torch.empty(B, T, H, dtype=grad_pooled.dtype, device=grad_pooled.device)
        _segment_mean_bwd[(B * T, triton.cdiv(H, _block_h(H)))](
            grad_pooled.contiguous(), span_ids, inv_count, grad_hidden, T, H, inv_count.shape[1], BLOCK_H=_block_h(H),
        )
        return grad_hidden, None, None


def _check(hidden: torch.Tensor, span_ids: torch.Tensor, n_spans: int) -> None:
    if hidden.dim() != 3 or span_ids.shape != hidden.shape[:2]:
        raise ValueError(f"span pooling: hidden {tuple(hidden.shape)} must be [B,T,H] and span_ids "
                         f"{tuple(span_ids.shape)} must be [B,T]")
    if n_spans < 1:
        raise ValueError(f"span pooling: n_spans={n_spans} must be >= 1")
    if span_ids.numel() and int(span_ids.max()) >= n_spans:
        raise ValueError(f"span pooling: span id {int(span_ids.max())} >= n_spans={n_spans}")


def span_mean_pool(hidden: torch.Tensor, span_ids: torch.Tensor, n_spans: int, force_torch: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled [B,M,H] in hidden's dtype with fp32 sums, counts [B,M] float32) of hidden [B,T,H]."""
    _check(hidden, span_ids, n_spans)
    if force_torch or not use_triton(hidden):
        return reference_span_mean_pool(hidden, span_ids, n_spans)
    return SpanMeanPool.apply(hidden.contiguous(), span_ids.long().contiguous(), n_spans)


def span_pool_project(
    hidden: torch.Tensor,
    span_ids: torch.Tensor,
    n_spans: int,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    force_torch: bool = False,
) -> torch.Tensor:
    """[B,M,D]: each span's mean hidden state projected by weight [D,H] (+ bias); empty spans are 0."""
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"span_pool_project: weight {tuple(weight.shape)} must be [D, {hidden.shape[-1]}]")
    pooled, counts = span_mean_pool(hidden, span_ids, n_spans, force_torch)
    return _project(pooled, counts, weight, bias)
