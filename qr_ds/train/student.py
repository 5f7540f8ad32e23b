"""One student: a (Q)LoRA-adapted (or fully trained) causal LM plus its mutual-distillation head, as one module,
so that a single DeepSpeed engine owns all of the student's trainable parameters."""
from __future__ import annotations

import torch
import torch.nn as nn

from qr_ds.models.packaged import resolve
from qr_ds.mutual.config import MutualConfig
from qr_ds.train.config import LORA_TARGETS, StudentConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(cfg: StudentConfig):
    from transformers import AutoTokenizer

    name = cfg.tokenizer or cfg.model
    tok = AutoTokenizer.from_pretrained(resolve(name), use_fast=True)
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"student '{cfg.name}': tokenizer {name} has no fast version, so no offset "
                         "mapping; qr_ds aligns students on character spans and needs offsets")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


class Student(nn.Module):
    def __init__(self, lm: nn.Module, head: nn.Module | None, use_kernels: bool):
        super().__init__()
        self.lm = lm
        self.head = head
        self.use_kernels = use_kernels

    def forward(self, input_ids, attention_mask, labels, token_weights, span_ids=None, n_spans: int = 0):
        """Returns (weighted loss, per-path total CE in nats [B], z [B,M,D] | None, competence logit [B] | None).

        Total nats, not the mean per token: it is -log p(response) whatever the tokenizer, so
        students with different tokenizers can be compared on the same path.

        The backbone's last hidden states feed both the loss (without materializing logits when
        the fused kernel is on) and the span pooling, so one forward serves SFT and mutual loss.
        """
        from qr_ds.kernels import causal_lm_loss, span_mean_pool

        loss, per_token, hidden = causal_lm_loss(self.lm, input_ids, attention_mask, labels,
                                                 token_weights=token_weights, use_kernels=self.use_kernels)
        nats = per_token.view(input_ids.shape[0], -1).sum(1)
        if self.head is None or n_spans == 0:
            return loss, nats, None, None
        pooled, counts = span_mean_pool(hidden, span_ids, n_spans, force_torch=not self.use_kernels)
        z, logit = self.head(pooled.to(self.head.proj.weight.dtype), counts > 0)
        return loss, nats, z, logit


def lora_targets(cfg: StudentConfig, lm: nn.Module) -> tuple[list[str], str | None]:
    """The target_modules ``lm`` has, and what is wrong with the list (None when nothing): a module
    named in a list the user gave that ``lm`` lacks (a typo would adapt less, silently), or none found."""
    present = {n.rsplit(".", 1)[-1] for n, _ in lm.named_modules()}
    targets = [t for t in cfg.lora.target_modules if t in present]
    missing = [t for t in cfg.lora.target_modules if t not in present]
    if missing and cfg.lora.target_modules != LORA_TARGETS:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in lm.named_modules() if isinstance(m, nn.Linear)})
        return targets, f"{missing} name no module of {cfg.model}; its linear layers are {linear}"
    if not targets:
        return targets, f"{cfg.lora.target_modules}: none exists in {cfg.model}"
    return targets, None


def skeleton(model: str) -> nn.Module:
    """``model``'s modules from its config alone, on the meta device: no weight is read, so a login
    node checks a 7B's module names in a second."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve(model)))


def build_student(cfg: StudentConfig, mutual: MutualConfig | None, device: torch.device) -> Student:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from qr_ds.mutual.heads import MutualHead

    dtype = DTYPES[cfg.dtype]
    kw: dict = {"dtype": dtype}
    if cfg.lora.quantize == "nf4":
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
            # ZeRO-3 partitions parameters by storage dtype: 4-bit weights must be stored in the compute dtype.
            bnb_4bit_quant_storage=dtype,
        )
        if device.type == "cuda":
            kw["device_map"] = {"": device.index or 0}
    lm = AutoModelForCausalLM.from_pretrained(resolve(cfg.model), **kw)
    if cfg.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lm.enable_input_require_grads()
    if cfg.finetune == "lora":
        targets, problem = lora_targets(cfg, lm)
        if problem:
            raise ValueError(f"student '{cfg.name}': lora.target_modules {problem}")
        lm = get_peft_model(lm, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                           target_modules=targets, task_type="CAUSAL_LM"))
    head = None
    if mutual is not None:
        head = MutualHead(lm.config.hidden_size, mutual.shared_dim, mutual.form == "anchored").to(dtype)
    student = Student(lm, head, cfg.use_kernels)
    if cfg.lora.quantize == "nf4":  # placed by device_map; only the head moves
        head is not None and head.to(device)
    else:
        student.to(device)
    return student


def param_groups(student: Student, cfg: StudentConfig, head_lr: float) -> list[dict]:
    """The model's trainable parameters at the student's rate; the mutual head at its own."""
    head = {id(p) for p in student.head.parameters()} if student.head is not None else set()
    params = [p for p in student.parameters() if p.requires_grad and id(p) not in head]
    # A frozen student (paper Table 5) is still an engine, with learning rate 0: its weights never
    # move, yet its ranks make every collective DeepSpeed makes (checkpoint saves are world-wide).
    lr, wd = (0.0, 0.0) if cfg.frozen else (cfg.lr, cfg.weight_decay)
    groups = [{"params": params, "lr": lr, "weight_decay": wd}]
    if head:  # new layers learn at their own rate, also beside a frozen or slow-learning student
        groups.append({"params": list(student.head.parameters()), "lr": head_lr, "weight_decay": 0.0})
    return groups
