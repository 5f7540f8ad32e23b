"""Mutual-student distillation (paper section 2.5): span alignment, per-student heads, the loss."""
from qr_ds.mutual.config import MutualConfig
from qr_ds.mutual.heads import MutualHead
from qr_ds.mutual.loss import MutualInputs, competence_weights, mutual_loss, mutual_loss_for_student
from qr_ds.mutual.spans import align, common_spans, group_spans, rebase, token_span_ids

__all__ = [
    "MutualConfig", "MutualHead", "MutualInputs", "competence_weights", "mutual_loss", "mutual_loss_for_student",
    "align", "common_spans", "group_spans", "rebase", "token_span_ids",
]
