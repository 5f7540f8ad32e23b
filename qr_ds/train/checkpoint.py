"""Saving and restoring a run from explicit state: each component gives a state dict and takes it
back; this module knows the layout (through qr_ds.run_layout) and the order of writes, not the trainer.

- students: each local student's engine goes through the strategy (DeepSpeed state, loadable
  folder with tokenizer, mutual head);
- ``components``: coordinator state dicts (router policy...), one ``<key>.pt`` each;
- ``position``: the data position, JSON;
- RNG: per rank, tensors and JSON-able lists only.

Everything here loads with ``torch.load(weights_only=True)``; a DeepSpeed engine state is loaded by
DeepSpeed itself and is trusted input. ``checkpoints/latest`` moves last, so a crash mid-save never
becomes the resume point.
"""
from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from qr_ds.distributed.strategy import StudentEngine
from qr_ds.run_layout import CheckpointDir, RunDir


@dataclass
class StudentSlot:
    """What one local student contributes to a checkpoint."""

    name: str
    engine: StudentEngine
    finetune: str  # "lora" | "full"
    tokenizer: Any


def rng_state() -> dict:
    """Every generator as tensors and plain lists, so it loads without unpickling."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": [version, list(mt), gauss],
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    def __init__(self, run: RunDir, strategy, keep_last: int, log: Callable[[str], None]):
        self.run, self.strategy, self.keep_last, self.log = run, strategy, keep_last, log

    def save(self, step: int, students: list[StudentSlot], components: dict[str, dict], position: dict,
             meta: dict, protected: set[str] = frozenset()) -> CheckpointDir:
        """Write every rank's part, then (coordinator) meta.json, 'latest' and pruning. Collective."""
        ckpt = self.run.checkpoint(step)
        ckpt.rng(self.strategy.rank).parent.mkdir(parents=True, exist_ok=True)
        for st in students:
            st.engine.save(ckpt.engine(st.name))
            weights = ckpt.weights(st.name, st.finetune)
            weights.parent.mkdir(parents=True, exist_ok=True)
            st.engine.export(weights, ckpt.head(st.name), st.finetune == "full", st.tokenizer)
        torch.save(rng_state(), ckpt.rng(self.strategy.rank))
        if self.strategy.is_coordinator:
            for key, state in components.items():
                torch.save(state, ckpt.component(key))
            ckpt.position.write_text(json.dumps(position))
        self.strategy.barrier()  # every rank's files are on disk before meta.json and 'latest'
        if self.strategy.is_coordinator:
            ckpt.meta.write_text(json.dumps({"step": step, **meta}, indent=1))
            self.run.set_latest(ckpt)
            self._prune(protected)
            self.log(f"saved {ckpt.path}")
        self.strategy.barrier()
        return ckpt

    def _prune(self, protected: set[str]) -> None:
        for old in self.run.all_checkpoints()[: -self.keep_last]:
            if old.name not in protected:  # an evaluation still reads it
                shutil.rmtree(old.path, ignore_errors=True)

    def load(self, students: list[StudentSlot], components: list[str]) -> tuple[dict, dict[str, dict]]:
        """Restore engines and this rank's RNG; return (position, {key: state}) for the caller to
        hand to its components (coordinator keys only on the coordinator)."""
        ckpt = self.run.require_latest()
        for st in students:
            st.engine.load(ckpt.engine(st.name), f"student '{st.name}'")
        set_rng_state(torch.load(ckpt.rng(self.strategy.rank), weights_only=True))
        states = {}
        if self.strategy.is_coordinator:
            states = {k: torch.load(ckpt.component(k), weights_only=True) for k in components}
        position = json.loads(ckpt.position.read_text())
        self.log(f"resumed from {ckpt.path} at step {position['step']}")
        return position, states
