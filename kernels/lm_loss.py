"""Causal-LM loss of a HF (optionally peft-wrapped) model through the fused linear+CE kernel.

The backbone gives the last hidden states once; the loss uses them with the lm_head weight without
building [B,T,V] logits, and the same hidden states are returned so the trainer can pool spans for
mutual distillation without a second forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fused_linear_ce import fused_linear_cross_entropy, reference_linear_cross_entropy


def _unwrap(model: nn.Module) -> nn.Module:
    """The HF *ForCausalLM under a peft wrapper (LoRA layers are injected in place, so they still run)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _shifted_weights(token_weights: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor | None:
    if token_weights is None:
        return None
    if token_weights.dim() == 1 and token_weights.shape[0] == labels.shape[0]:
        token_weights = token_weights[:, None].expand(labels.shape)
    if token_weights.shape != labels.shape:
        raise ValueError(f"causal_lm_loss: token_weights {tuple(token_weights.shape)} must be [B] or "
                         f"[B,T] like labels {tuple(labels.shape)}")
    return token_weights[:, 1:].reshape(-1)


def causal_lm_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    token_weights: torch.Tensor | None = None,
    use_kernels: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, per_token_ce [B,T] fp32 detached, last_hidden [B,T,H]).

    labels [B,T] are unshifted (as for ``model(labels=...)``); -100 marks tokens without loss.
    per_token_ce[b, t] is the CE of predicting labels[b, t] (0 at t=0 and at ignored tokens).
    token_weights None: mean over non-ignored tokens (HF's loss). [B,T] (aligned with labels) or
    [B] (one weight per sequence, applied to each of its tokens): loss = sum_t w_t * ce_t, unnormalized.
    use_kernels=False: lm_head logits + F.cross_entropy, the reference path.
    """
    lm = _unwrap(model)
    head = lm.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise ValueError(f"causal_lm_loss: {type(lm).__name__}'s lm_head has a bias; the fused loss supports none")
    hidden = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    B, T, H = hidden.shape
    flat_hidden = hidden[:, :-1].reshape(-1, H).to(head.weight.dtype)  # e.g. fp32 norm output, bf16 head
    flat_labels = labels[:, 1:].reshape(-1)
    weights = _shifted_weights(token_weights, labels)
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    if use_kernels:
        loss, ce = fused_linear_cross_entropy(flat_hidden, head.weight, flat_labels, weights, softcap=softcap)
    else:
        loss, ce = reference_linear_cross_entropy(flat_hidden, head.weight, flat_labels, weights, softcap=softcap)
    per_token = F.pad(ce.view(B, T - 1), (1, 0))
    return loss, per_token, hidden

