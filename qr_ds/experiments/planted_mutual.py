"""A mutual-distillation experiment whose right answer is known: a competent and an incompetent student.

Two tiny students of different architectures and tokenizers (Llama + byte-level BPE, Qwen2 +
Qwen2-style BPE) share the synthetic task's paths. The first is pre-trained on them (SFT), the second
starts from random weights. Both then train together on every path, co-routed, with
SFT + lambda2 * mutual loss. Right answers: the competence weights favour the pre-trained student on
most paths, and the projected states keep their scale. Eq. 8 as written (``form="paper"``) instead
shrinks z and leaves gamma near uniform.
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from qr_ds.mutual.heads import MutualHead
from qr_ds.mutual.loss import competence_weights, mutual_loss


@dataclass
class Competence:
    n_questions: int = 40
    pretrain_steps: int = 150
    mutual_steps: int = 100
    batch_paths: int = 8
    lambda2: float = 0.1
    lr: float = 1e-3
    head_lr: float = 1e-3
    shared_dim: int = 32
    max_spans: int = 8
    hidden: int = 64
    seed: int = 0


def _students(p: Competence, work: Path, records) -> list:
    from qr_ds.testing.builders import corpus_of
    from qr_ds.tiny import build_tiny_student, tokenizer_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = corpus_of(records)
    out = []
    for i, kind in enumerate(("llama-bpe", "qwen-bpe")):
        d = build_tiny_student(kind, work / kind, text, vocab_size=400, hidden=p.hidden, layers=2, seed=p.seed + i)
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir(d)))
        out.append((AutoModelForCausalLM.from_pretrained(str(d)), tok))
    return out


def _batch_loss(student, batch, max_spans: int):
    """The trainer's Student forward (torch reference kernels) with per-token mean weights:
    (mean SFT loss per token, total nats per path [B], z [B,M,D] | None, logit [B] | None)."""
    labels = batch["labels"]
    n_tok = (labels[:, 1:] != -100).sum(1, keepdim=True).clamp(min=1)
    weights = torch.zeros_like(labels, dtype=torch.float32)
    weights[:, 1:] = (labels[:, 1:] != -100) / (n_tok * len(labels))
    return student(batch["input_ids"], batch["attention_mask"], labels, weights, batch["span_ids"], max_spans)


def run_competence(p: Competence, form: str = "anchored") -> dict:
    """Pre-train student 0, then train both with the mutual loss in ``form``; return gamma and ||z||."""
    from qr_ds.testing.builders import synthetic_records
    from qr_ds.train.data import collate
    from qr_ds.train.encoding import encode_all
    from qr_ds.train.student import Student

    torch.manual_seed(p.seed)
    records = synthetic_records(p.n_questions, p.seed)
    with tempfile.TemporaryDirectory(prefix="qr_ds_competence_") as work:
        students = _students(p, Path(work), records)
    encoded, n_spans = encode_all(records, [tok for _, tok in students], 256, p.max_spans)
    g = torch.Generator().manual_seed(p.seed)

    def batch_of(idx, s):
        return collate([encoded[s][i] for i in idx], students[s][1].pad_token_id, "cpu")

    def span_mask(idx):
        return torch.arange(p.max_spans)[None] < torch.tensor([n_spans[i] for i in idx])[:, None]

    lm0 = Student(students[0][0], None, use_kernels=False)
    opt = torch.optim.AdamW(lm0.parameters(), lr=p.lr)
    for _ in range(p.pretrain_steps):
        idx = torch.randint(len(records), (p.batch_paths,), generator=g).tolist()
        loss = _batch_loss(lm0, batch_of(idx, 0), p.max_spans)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()

    models = [Student(lm, MutualHead(lm.config.hidden_size, p.shared_dim, form == "anchored"), use_kernels=False)
              for lm, _ in students]
    opts = [torch.optim.AdamW([{"params": m.lm.parameters(), "lr": p.lr},
                               {"params": m.head.parameters(), "lr": p.head_lr}]) for m in models]
    probe = torch.randperm(len(records), generator=g)[:32].tolist()

    @torch.no_grad()
    def measure():
        outs = [_batch_loss(m, batch_of(probe, s), p.max_spans) for s, m in enumerate(models)]
        mask = span_mask(probe)
        norms = [o[2][mask].norm(dim=-1).mean().item() for o in outs]
        gamma = competence_weights(torch.stack([o[3] for o in outs]), torch.ones(2, len(probe), dtype=torch.bool))
        return norms, gamma[0], [o[0].item() for o in outs]

    start_norms, start_gamma, start_sft = measure()
    history = []
    for step in range(1, p.mutual_steps + 1):
        idx = torch.randint(len(records), (p.batch_paths,), generator=g).tolist()
        outs = [_batch_loss(m, batch_of(idx, s), p.max_spans) for s, m in enumerate(models)]
        routed = torch.ones(2, len(idx), dtype=torch.bool)
        m = mutual_loss(torch.stack([o[2] for o in outs]), torch.stack([o[3] for o in outs]), routed,
                        span_mask(idx), len(idx), form, torch.stack([o[1] for o in outs]))
        total = outs[0][0] + outs[1][0] + p.lambda2 * m
        for o in opts:
            o.zero_grad()
        total.backward()
        for o in opts:
            o.step()
        if step % 25 == 0:
            n, g0, _ = measure()
            history.append({"step": step, "z_norm": n, "gamma_pretrained": g0.mean().item()})
    norms, gamma0, sft = measure()
    return {"setup": asdict(p), "form": form,
            "sft_per_token_start": start_sft, "sft_per_token_end": sft,
            "z_norm_start": start_norms, "z_norm_end": norms,
            "z_norm_ratio": [b / a for a, b in zip(start_norms, norms)],
            "gamma_pretrained_start": start_gamma.mean().item(),
            "gamma_pretrained_mean": gamma0.mean().item(),
            "share_paths_favouring_pretrained": (gamma0 > 0.5).float().mean().item(), "history": history}
