"""Tiny models, LoRA adapters and training-run folders in the trainer's checkpoint layout, for eval tests."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from qr_ds.data.pool import PathRecord, write_pool
from qr_ds.run_layout import RunDir
from qr_ds.tasks import generate_synthetic, write_synthetic

# writes BOS itself: with a BOS-adding tokenizer this is where engines tokenizing text disagree
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
TARGETS = ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]


def build_base(folder: Path, kind: str = "llama-bpe", chat: bool = True) -> Path:
    from transformers import AutoTokenizer

    from qr_ds.tiny import build_tiny_student

    corpus = [e.question for e in generate_synthetic(60, seed=0)] + ["The answer is 42."]
    build_tiny_student(kind, folder, corpus, vocab_size=400)
    if chat:
        tok = AutoTokenizer.from_pretrained(folder)
        tok.chat_template = CHAT_TEMPLATE
        tok.save_pretrained(folder)
    return folder


def build_adapter(base: Path, out: Path, seed: int, r: int = 8) -> Path:
    """A LoRA with random A and B (not PEFT's zero B), so it changes the greedy output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS, task_type="CAUSAL_LM",
                                            init_lora_weights=False))
    peft.save_pretrained(out)
    return out


def build_full(base: Path, out: Path, seed: int) -> Path:
    """Whole weights of ``base``, every tensor moved by seeded noise, as a fully fine-tuned student saves them."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(out)
    return out


def build_run(run: Path, bases: dict[str, Path], steps: list[int], r: int = 8, full: tuple[str, ...] = ()) -> Path:
    """RUN/checkpoints/step_*/ (meta.json + students/<name>/adapter), latest, config.yaml, pool.jsonl.
    ``bases`` maps student name -> base model dir; each (step, student) adapter gets its own seed.
    Students named in ``full`` are fully fine-tuned: whole weights in students/<name>/model."""
    layout = RunDir(run)
    for i, step in enumerate(steps):
        ckpt = layout.checkpoint(step)
        meta = {"step": step, "students": [{"name": n, "model": str(b), "tokenizer": str(b),
                                            "finetune": "full" if n in full else "lora"} for n, b in bases.items()]}
        for j, (name, base) in enumerate(bases.items()):
            if name in full:
                build_full(base, ckpt.weights(name, "full"), seed=100 * i + j)
            else:
                build_adapter(base, ckpt.weights(name, "lora"), seed=100 * i + j, r=r)
        ckpt.meta.write_text(json.dumps(meta))
    layout.set_latest(layout.checkpoint(steps[-1]))
    layout.config.write_text(yaml.safe_dump({"data": {"pool": str(run / "pool.jsonl")}}))
    return run


def write_task_data(path: Path, n: int = 4) -> Path:
    write_synthetic(path, n, seed=7)
    return path


def write_teacher_pool(path: Path, n: int = 4) -> tuple[Path, float]:
    """Two paths per question: one right, one wrong (``correct`` left unset on the odd ones, so the
    pool reader has to judge them itself). Returns the path and the expected per-path accuracy."""
    recs = []
    for q in generate_synthetic(n, seed=7):
        for s, answer in enumerate([q.gold, str(int(q.gold) + 1)]):
            recs.append(PathRecord(id=f"{q.id}/cot/{s}", task="synthetic", question_id=q.id, question=q.question,
                                   gold=q.gold, teacher="scripted", style="cot", sample=s, prompt=q.question,
                                   response=f"So the answer is {answer}.", correct=(s == 0) if s == 0 else None))
    write_pool(path, recs)
    return path, 0.5
