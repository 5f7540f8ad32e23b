"""Builders shared by tests, benchmarks and known-answer experiments: synthetic path records, tiny
students, a small embedded pool, train configs, and the real launcher."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from qr_ds.data.pool import EmbeddingRef, JudgeVerdict, PathRecord, write_pool
from qr_ds.data.styles import DEFAULT_TEMPLATES, STYLES
from qr_ds.embed.lookup import text_hash
from qr_ds.tasks import generate_synthetic, get_task
from qr_ds.tiny import build_tiny_student, tokenizer_dir

ROOT = Path(__file__).resolve().parents[2]


def synthetic_records(n_questions: int, seed: int = 0) -> list[PathRecord]:
    """Synthetic questions x six styles, each path rendered the way its style ends, all correct."""
    task = get_task("synthetic")
    return [PathRecord(
        id=f"{ex.id}/{style}/0", task="synthetic", question_id=ex.id, question=ex.question,
        gold=ex.gold, teacher="scripted-teacher", style=style, sample=0,
        prompt=DEFAULT_TEMPLATES[style].format(question=ex.question),
        response=task.render_final(ex, style), level=ex.level, answer=ex.gold, correct=True,
        judge=JudgeVerdict("VALID", "scripted")) for ex in generate_synthetic(n_questions, seed) for style in STYLES]


def make_pool(out: Path, n_questions: int = 8, seed: int = 0, emb_dim: int = 16) -> Path:
    """``synthetic_records`` with random embeddings, written as an embedded pool."""
    return embedded_pool(out, synthetic_records(n_questions, seed), seed, emb_dim)


def embedded_pool(out: Path, recs: list[PathRecord], seed: int = 0, emb_dim: int = 16) -> Path:
    """``recs`` with random embeddings (the router's input), written as an embedded pool."""
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((len(recs), emb_dim)).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "emb.npy", emb)
    for i, r in enumerate(recs):
        r.embedding = EmbeddingRef("emb.npy", i, text_hash(r.response))
    write_pool(out / "pool.jsonl", recs)
    return out / "pool.jsonl"


def corpus_of(records: list[PathRecord]) -> list[str]:
    """Text to train tiny tokenizers on: questions, paths and the tasks' instructions."""
    return [t for r in records for t in (r.question, r.response, get_task(r.task).instruction)]


def corpus(pool: Path) -> list[str]:
    from qr_ds.data.pool import load_pool

    return corpus_of(load_pool(pool).records)


def make_students(out: Path, pool: Path, kinds=("llama-bpe", "gemma-unigram")) -> list[Path]:
    text = corpus(pool)
    return [build_tiny_student(k, out / k, text, vocab_size=1000, seed=i) for i, k in enumerate(kinds)]


def write_config(path: Path, students: list[Path], pool: Path, out_dir: Path, ranks=None, **over) -> Path:
    ranks = ranks or [1] * len(students)
    cfg = {
        "students": [{"name": s.name.split("-")[0], "model": str(s), "tokenizer": str(tokenizer_dir(s)),
                      "ranks": r, "lr": 1e-3,
                      "deepspeed": str(ROOT / "ds_configs/zero2.json"), "lora": {"r": 4, "alpha": 8}}
                     for s, r in zip(students, ranks)],
        "data": {"pool": str(pool), "max_len": 256},
        "router": {"hidden": 16},
        "mutual": {"shared_dim": 16, "max_spans": 8},
        "micro_batch_paths": 2, "epochs": 1, "max_steps": 3, "seed": 0,
        "output_dir": str(out_dir), "collective_timeout_s": 60,
    }
    for k, v in over.items():
        cfg[k] = v
    path.write_text(yaml.safe_dump(cfg))
    return path


def launch(config: Path, nprocs: int, *extra: str, timeout: float = 300, env_extra=None, background=False,
           launcher: str = "deepspeed"):
    """The real DeepSpeed launcher (or torchrun) on CPU (gloo); a running Popen when ``background``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # trainer uses the torch path on CPU
    env = {**env, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "MASTER_PORT": str(_free_port()), **(env_extra or {})}  # env_extra may name the accelerator
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nprocs),
               "--master-port", env["MASTER_PORT"]]
    else:
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nprocs),
               "--master_port", env["MASTER_PORT"]]
    cmd += [str(ROOT / "launch/train.py"), "--config", str(config), *extra]
    if background:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
