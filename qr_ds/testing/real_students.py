"""The real pair (SmolLM2-135M-Instruct + Gemma-3-270M, from their PyPI packages) on real teacher paths,
for the tests and the benchmark that measure what a tiny random-init student cannot show."""
from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import yaml

from qr_ds.data.pool import JudgeVerdict, PathRecord
from qr_ds.models.packaged import PACKAGED, PREFIX
from qr_ds.tasks import get_task
from qr_ds.testing.builders import embedded_pool

ROOT = Path(__file__).resolve().parents[2]
TEACHER_OUTPUTS = ROOT / "tests" / "fixtures" / "teacher_outputs"  # Gemini answers, see its README.md
PAIR = {"smollm2": f"{PREFIX}smollm2-135m-instruct", "gemma3": f"{PREFIX}gemma3-270m"}
TASK_FILES = {"arc": "arc_challenge", "strategyqa": "strategyqa", "gsm8k": "gsm8k", "date": "date_understanding",
              "anli": "anli"}


def missing_packages() -> str | None:
    """Why the pair cannot be built here (a package not installed), or None."""
    for name, entry in PACKAGED.items():
        for part in entry.parts:
            try:
                metadata.distribution(part.distribution)
            except metadata.PackageNotFoundError:
                return f"packaged model {name} not installed: {entry.pip}"
    return None


def teacher_records(file: str = "arc", limit: int | None = None, correct_only: bool = True) -> list[PathRecord]:
    """The real teacher's answers as pool records (one path per question, style 'cot'), the
    reference verdict as the filter's."""
    task = get_task(TASK_FILES[file])
    out = []
    for line in (TEACHER_OUTPUTS / f"{file}.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if correct_only and not rec["ref_correct"]:
            continue
        ex = task.from_record(rec)
        out.append(PathRecord(
            id=f"{ex.id}/cot/0", task=task.name, question_id=ex.id, question=ex.question, gold=ex.gold,
            teacher="gemini (published)", style="cot", sample=0, prompt=ex.question, response=rec["response"],
            answer=rec["ref_answer"], correct=rec["ref_correct"], judge=JudgeVerdict("VALID", "reference"),
            meta={"choices": [list(c) for c in ex.choices]} if ex.choices else {}))  # as generate keeps them
        if limit and len(out) == limit:
            break
    return out


def teacher_pool(out: Path, file: str = "arc", limit: int | None = 8, emb_dim: int = 16, seed: int = 0) -> Path:
    """``teacher_records`` with random embeddings (the router's input; what it learns is not tested here)."""
    return embedded_pool(out, teacher_records(file, limit), seed, emb_dim)


def write_pair_config(path: Path, pool: Path, out_dir: Path, finetune: str = "lora", **over) -> Path:
    """Both real students, one rank each, LoRA r=8 on every projection, paths cut at 160 tokens: CPU steps."""
    cfg = {
        "students": [{"name": name, "model": spec, "finetune": finetune, "lr": 1e-4, "ranks": 1,
                      "deepspeed": str(ROOT / "ds_configs/zero2.json"), "lora": {"r": 8, "alpha": 16}}
                     for name, spec in PAIR.items()],
        "data": {"pool": str(pool), "max_len": 160},
        "router": {"hidden": 16},
        "mutual": {"shared_dim": 32, "max_spans": 16},
        "micro_batch_paths": 2, "epochs": 1, "max_steps": 2, "seed": 0,
        "output_dir": str(out_dir), "collective_timeout_s": 600,
    }
    cfg.update(over)
    path.write_text(yaml.safe_dump(cfg))
    return path
