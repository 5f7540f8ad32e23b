"""Peer teaching, on an experiment where transfer is the outcome: does the mutual term teach a
student the part of the task that only its peer trained on?

Two tiny students of different architectures and tokenizers (Llama + byte-level BPE, Qwen2 +
Qwen2-style BPE) get disjoint knowledge by style, the unit the router assigns: A warm-starts on all six
styles, B on Y (vanilla, cot, tot) only and never SFT-trains on X (program, fact_retrieval,
backward). Both then train together for the same steps on the same batches, the router's decision
planted (Y to both, X to A), and arms differ only in the mutual term:
- off: SFT only (w/o Collab);
- co-routed: as the trainer runs it, on paths routed to >= 2 students, so Y only;
- all: eq. 8 over every (student, path) pair: B forwards X paths at SFT weight 0, the mutual term live;
- reference (``b_trains_on_x``): X routed to B too, no mutual term: what training on the text gives;
- control (``peer_knows_x=False``): "all" beside a peer warm-started and trained on Y only, so what
  B gains there comes from forwarding X under the term, not from what the peer knows.
The outcome is B's own held-out loss, nats per character of the response on paths of questions
nobody trains on, and its next-token accuracy, per half; never gamma.
"""
from __future__ import annotations

import copy
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from qr_ds.mutual.heads import MutualHead
from qr_ds.mutual.loss import mutual_loss
from qr_ds.train.data import collate
from qr_ds.train.encoding import encode_all
from qr_ds.train.student import Student

X_STYLES = ("program", "fact_retrieval", "backward")  # A's alone: B never SFT-trains on them
KINDS = ("llama-bpe", "qwen-bpe")  # A, B


@dataclass
class Transfer:
    n_questions: int = 40
    heldout_questions: int = 12
    warm_steps: int = 200
    steps: int = 200
    batch_paths: int = 8
    lr: float = 1e-3
    shared_dim: int = 32
    max_spans: int = 64  # the config default: spans about a word long, the finest matching there is
    hidden: int = 64
    seed: int = 0  # students' init, warm-start and training order; the questions stay fixed


@dataclass(frozen=True)
class Arm:
    mutual: str = "off"  # off | co-routed | all
    form: str = "anchored"
    lambda2: float = 1.0
    head_lr: float = 1e-3  # mutual.head_lr's default
    b_trains_on_x: bool = False
    peer_knows_x: bool = True

    @property
    def label(self) -> str:
        if self.mutual == "off":
            return "reference: B trains on X" if self.b_trains_on_x else "mutual off"
        control = "" if self.peer_knows_x else ", control: peer never trained on X"
        head = "" if self.head_lr == 1e-3 else f", head_lr={self.head_lr:g}"
        return f"{self.form}, {self.mutual}, lambda2={self.lambda2:g}{head}{control}"


@dataclass
class Split:
    """Encoded paths of one record set, for both students."""
    encoded: list[list]  # [student][path]
    n_spans: torch.Tensor  # [paths]
    is_x: torch.Tensor  # [paths] bool
    chars: torch.Tensor  # [paths] response characters


@dataclass
class Setup:
    p: Transfer
    tokenizers: list
    warm: list  # warm-started LMs copied by every arm: A (all styles), B (Y)
    warm_a_on_y: torch.nn.Module  # A warm-started on Y only, the control's peer
    train: Split
    heldout: Split
    b_targets: torch.Tensor  # [vocab B] bool: token ids that were ever an SFT target of B


def _split(records, tokenizers, max_spans: int) -> Split:
    encoded, n_spans = encode_all(records, tokenizers, 256, max_spans)
    return Split(encoded, torch.tensor(n_spans), torch.tensor([r.style in X_STYLES for r in records]),
                 torch.tensor([max(len(r.response), 1) for r in records], dtype=torch.float32))


def _batch(split: Split, s: int, idx: list[int], pad_id: int) -> dict:
    return collate([split.encoded[s][i] for i in idx], pad_id, "cpu")


def _forward(model: Student, batch: dict, path_weight: torch.Tensor, max_spans: int):
    """The trainer's Student forward with its SFT weights: path_weight per path, spread over the
    path's response tokens (trainer.forward_student)."""
    labels = batch["labels"]
    n_tok = (labels[:, 1:] != -100).sum(1, keepdim=True).clamp(min=1)
    weights = torch.zeros_like(labels, dtype=torch.float32)
    weights[:, 1:] = (labels[:, 1:] != -100) * (path_weight[:, None] / n_tok)
    return model(batch["input_ids"], batch["attention_mask"], labels, weights, batch["span_ids"], max_spans)


def prepare(p: Transfer) -> Setup:
    """Tokenizers, tiny students, the encoded paths, and A and B warm-started on their halves."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qr_ds.testing.builders import corpus_of, synthetic_records
    from qr_ds.tiny import build_tiny_student, tokenizer_dir

    torch.manual_seed(p.seed)
    records = synthetic_records(p.n_questions, seed=0)
    seen = {r.question for r in records}
    heldout = [r for r in synthetic_records(p.heldout_questions * 2, seed=1) if r.question not in seen]
    heldout = heldout[: p.heldout_questions * 6]
    lms, toks = [], []
    with tempfile.TemporaryDirectory(prefix="qr_ds_transfer_") as work:
        for i, kind in enumerate(KINDS):
            d = build_tiny_student(kind, Path(work) / kind, corpus_of(records), vocab_size=400, hidden=p.hidden,
                                   layers=2, seed=p.seed * 10 + i)
            toks.append(AutoTokenizer.from_pretrained(str(tokenizer_dir(d))))
            lms.append(AutoModelForCausalLM.from_pretrained(str(d)))
    train = _split(records, toks, p.max_spans)
    a_on_y = copy.deepcopy(lms[0])
    y = torch.nonzero(~train.is_x).flatten()
    for s, lm, pool in ((0, lms[0], torch.arange(len(records))), (1, lms[1], y), (0, a_on_y, y)):
        g = torch.Generator().manual_seed(p.seed)
        student, opt = Student(lm, None, use_kernels=False), torch.optim.AdamW(lm.parameters(), lr=p.lr)
        for _ in range(p.warm_steps):
            idx = pool[torch.randint(len(pool), (p.batch_paths,), generator=g)].tolist()
            loss = _forward(student, _batch(train, s, idx, toks[s].pad_token_id),
                            torch.full((len(idx),), 1 / len(idx)), 0)[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
    b_targets = torch.zeros(len(toks[1]), dtype=torch.bool)
    for i in torch.nonzero(~train.is_x).flatten().tolist():  # B's SFT data: Y, in warm-start and after
        b_targets[[t for t in train.encoded[1][i].labels[1:] if t != -100]] = True
    return Setup(p, toks, lms, a_on_y, train, _split(heldout, toks, p.max_spans), b_targets)


def routing(is_x: torch.Tensor, arm: Arm) -> tuple[torch.Tensor, torch.Tensor]:
    """(SFT routing [S, P], where the mutual term acts [S, P]) for a batch, per the planted router."""
    sft = torch.stack([~is_x | arm.peer_knows_x, ~is_x | arm.b_trains_on_x])
    return sft, torch.ones_like(sft) if arm.mutual == "all" else sft


def step_losses(models: list[Student], setup: Setup, idx: list[int], arm: Arm):
    """(SFT loss summed over students, mutual loss | None) of one batch. Every student forwards the
    whole batch; an unrouted path carries SFT weight 0, as the trainer's (whose probe of it has no
    grad: the same gradient)."""
    split, p = setup.train, setup.p
    sft_routed, mutual_on = routing(split.is_x[idx], arm)
    outs = [_forward(m, _batch(split, s, idx, setup.tokenizers[s].pad_token_id), sft_routed[s] / len(idx),
                     p.max_spans if arm.mutual != "off" else 0) for s, m in enumerate(models)]
    sft = sum(o[0] for o in outs)
    if arm.mutual == "off":
        return sft, None
    span_mask = torch.arange(p.max_spans)[None] < split.n_spans[idx][:, None]
    m = mutual_loss(torch.stack([o[2] for o in outs]), torch.stack([o[3] for o in outs]), mutual_on.bool(),
                    span_mask, len(idx), arm.form, torch.stack([o[1] for o in outs]))
    return sft, m


def build_models(setup: Setup, arm: Arm) -> tuple[list[Student], list[torch.optim.Optimizer]]:
    p = setup.p
    torch.manual_seed(p.seed)
    models, opts = [], []
    for lm in (setup.warm[0] if arm.peer_knows_x else setup.warm_a_on_y, setup.warm[1]):
        lm = copy.deepcopy(lm)
        head = MutualHead(lm.config.hidden_size, p.shared_dim, arm.form == "anchored") if arm.mutual != "off" else None
        groups = [{"params": lm.parameters(), "lr": p.lr}]
        if head is not None:  # new layers at their own rate, as trainer param_groups does
            groups.append({"params": head.parameters(), "lr": arm.head_lr})
        models.append(Student(lm, head, use_kernels=False))
        opts.append(torch.optim.AdamW(groups))
    return models, opts


def run_arm(setup: Setup, arm: Arm) -> dict:
    """Train both students ``setup.p.steps`` steps in ``arm`` (the same batches in every arm of a
    seed), then measure them on the held-out paths."""
    p = setup.p
    models, opts = build_models(setup, arm)
    g = torch.Generator().manual_seed(p.seed + 1)
    mutual_trace = []
    for _ in range(p.steps):
        idx = torch.randint(len(setup.train.is_x), (p.batch_paths,), generator=g).tolist()
        sft, m = step_losses(models, setup, idx, arm)
        loss = sft if m is None else sft + arm.lambda2 * m
        for o in opts:
            o.zero_grad()
        loss.backward()
        for o in opts:
            o.step()
        if m is not None:
            mutual_trace.append(m.item())
    out = {"arm": asdict(arm), "label": arm.label, "seed": p.seed, "steps": p.steps,
           "students": {k: measure(mdl.lm, setup, s) for s, (k, mdl) in enumerate(zip(KINDS, models))}}
    if mutual_trace:
        k = max(1, len(mutual_trace) // 10)
        out["mutual_loss_first_last"] = [sum(mutual_trace[:k]) / k, sum(mutual_trace[-k:]) / k]
    return out


@torch.no_grad()
def measure(lm, setup: Setup, s: int) -> dict:
    """Held-out nats per character and next-token accuracy on X and Y; for B, X's per-token loss on
    tokens it was ever trained to emit ("seen") and on tokens only X uses ("unseen")."""
    h, tok = setup.heldout, setup.tokenizers[s]
    batch = _batch(h, s, list(range(len(h.is_x))), tok.pad_token_id)
    logits = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    valid = labels != -100
    ce = F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none") * valid
    hit = (logits.argmax(-1) == labels) & valid
    out = {}
    for name, part in (("X", h.is_x), ("Y", ~h.is_x)):
        out[f"nats_per_char_{name}"] = (ce[part].sum() / h.chars[part].sum()).item()
        out[f"token_accuracy_{name}"] = (hit[part].sum() / valid[part].sum()).item()
    if s == 1:
        seen = setup.b_targets[labels.clamp(min=0)] & valid & h.is_x[:, None]
        unseen = ~setup.b_targets[labels.clamp(min=0)] & valid & h.is_x[:, None]
        out["X_nats_per_token_seen"] = (ce[seen].sum() / seen.sum()).item()
        out["X_nats_per_token_unseen"] = (ce[unseen].sum() / unseen.sum().clamp(min=1)).item()
        out["X_share_of_nats_unseen"] = (ce[unseen].sum() / ce[seen | unseen].sum()).item()
        out["X_tokens_unseen"] = int(unseen.sum())
        out["X_tokens"] = int((seen | unseen).sum())
    return out


def mutual_gradient_on_x(setup: Setup, arm: Arm, n_paths: int = 8) -> dict[str, float]:
    """Norm of the gradient the mutual term alone gives B's parameters on a batch of X paths only,
    by part: the body (embeddings and layers), the LM head (which sets the next-token
    distribution), and the mutual head."""
    models, _ = build_models(setup, arm)
    idx = torch.nonzero(setup.train.is_x).flatten()[:n_paths].tolist()
    _, m = step_losses(models, setup, idx, arm)
    m.backward()
    b = models[1]
    lm_head = b.lm.get_output_embeddings().weight

    def norm(params) -> float:
        grads = [q.grad.norm() ** 2 for q in params if q.grad is not None]
        return float(sum(grads) ** 0.5) if grads else 0.0

    return {"body": norm(q for q in b.lm.parameters() if q is not lm_head), "lm_head": norm([lm_head]),
            "mutual_head": norm(b.head.parameters())}
