"""Checkpoints: PEFT adapters (loadable by peft and vLLM), engine states, router, RNG and data position.

Layout (``RUN/checkpoints/step_000100``): ``students/<name>/adapter/`` (PEFT; ``model/``, a whole
``save_pretrained`` model, for ``finetune: full``), ``students/<name>/
mutual_head.pt``, ``engines/<name>/`` (DeepSpeed: module, optimizer, scheduler), ``router.pt``,
``rng/rank<r>.pt``, ``trainer_state.json``, ``meta.json``. ``RUN/checkpoints/latest`` names the
newest complete one; it is written last, so a crash mid-save never becomes the resume point.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch


WEIGHTS_DIR = {"lora": "adapter", "full": "model"}  # under students/<name>/, by StudentConfig.finetune


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _gathered(engine):
    """ZeRO-3 shards parameters: gather the trainable ones before saving the adapter (or model)."""
    if hasattr(engine, "zero_optimization_stage") and engine.zero_optimization_stage() == 3:
        import deepspeed

        return deepspeed.zero.GatheredParameters([p for p in engine.module.parameters() if p.requires_grad])
    return nullcontext()


def save_whole_model(lm, out: Path) -> None:
    """``save_pretrained``'s files, written from any rank.

    transformers writes model files only on global rank 0 once torch.distributed is up, but each
    student's writer is its own first rank (rank 1 for the second student): its folder stayed empty.
    Tied weights (Gemma's embedding and output layer) share storage; like save_pretrained we keep
    the first name, and loading re-ties them.
    """
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    seen, state = set(), {}
    for name, t in lm.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key not in seen:
            seen.add(key)
            state[name] = t.detach().cpu().contiguous()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    lm.config.save_pretrained(str(out))
    if getattr(lm, "generation_config", None) is not None:
        lm.generation_config.save_pretrained(str(out))


def save(trainer, out_dir: Path) -> Path:
    cfg, dist, pos = trainer.cfg, trainer.dist, trainer.pos
    root = out_dir / "checkpoints"
    ckpt = root / f"step_{pos.step:06d}"
    for sub in ("students", "engines", "rng"):
        (ckpt / sub).mkdir(parents=True, exist_ok=True)
    for st in trainer.students:
        module = st.model.module
        st.model.save_checkpoint(str(ckpt / "engines" / st.name), tag="state")
        with _gathered(st.model):
            if trainer.layout.dp_rank(st.index, dist.rank) == 0:
                sdir = ckpt / "students" / st.name
                finetune = cfg.students[st.index].finetune
                if finetune == "full":
                    save_whole_model(module.lm, sdir / WEIGHTS_DIR[finetune])
                else:
                    module.lm.save_pretrained(str(sdir / WEIGHTS_DIR[finetune]))
                if module.head is not None:
                    torch.save(module.head.state_dict(), sdir / "mutual_head.pt")
    torch.save(_rng_state(), ckpt / "rng" / f"rank{dist.rank}.pt")
    if trainer.is_coord:
        if trainer.routing is not None:
            torch.save(trainer.routing.state_dict(), ckpt / "router.pt")
        (ckpt / "trainer_state.json").write_text(json.dumps(vars(pos)))
        meta = {"step": pos.step, "students": [
            {"name": s.name, "model": s.model, "tokenizer": s.tokenizer or s.model, "finetune": s.finetune}
            for s in cfg.students]}
        (ckpt / "meta.json").write_text(json.dumps(meta, indent=1))
    dist.barrier()  # every rank's files are on disk before 'latest' moves
    if trainer.is_coord:
        tmp = root / "latest.tmp"
        tmp.write_text(ckpt.name)
        os.replace(tmp, root / "latest")
        done = sorted(p for p in root.glob("step_*") if p.is_dir())
        for old in done[: -cfg.keep_last]:
            if old.name in trainer.protected_checkpoints():
                continue
            shutil.rmtree(old, ignore_errors=True)
        trainer.say(f"saved {ckpt}")
    dist.barrier()
    return ckpt


def latest(out_dir: Path) -> Path:
    marker = out_dir / "checkpoints" / "latest"
    if not marker.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint in {out_dir / 'checkpoints'} (no 'latest' file)")
    return out_dir / "checkpoints" / marker.read_text().strip()


def load(trainer, out_dir: Path):
    from qr_ds.train.trainer import Position

    ckpt = latest(out_dir)
    for st in trainer.students:
        path, _ = st.model.load_checkpoint(str(ckpt / "engines" / st.name), tag="state")
        if path is None:
            raise FileNotFoundError(f"--resume: engine state for student '{st.name}' missing in {ckpt}")
    if trainer.routing is not None:
        trainer.routing.load_state_dict(torch.load(ckpt / "router.pt", weights_only=True))
    _set_rng_state(torch.load(ckpt / "rng" / f"rank{trainer.dist.rank}.pt", weights_only=False))
    pos = Position(**json.loads((ckpt / "trainer_state.json").read_text()))
    trainer.say(f"resumed from {ckpt} at step {pos.step} (epoch {pos.epoch}, batch {pos.batch})")
    return pos
