"""Saving and restoring a run from explicit state: each component gives a state dict and takes it
back; this module decides when to save and what to keep, and knows the layout (through
qr_ds.run_layout) and the order of writes; the trainer knows none of it.

- students: each local student's StudentEngine saves its DeepSpeed state and exports its loadable
  folder (with tokenizer and mutual head);
- ``components``: coordinator state dicts (router policy...), one ``<key>.pt`` each;
- ``position``: the data position (train/position.py), JSON;
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
from typing import Any, Callable, Protocol

import numpy as np
import torch

from qr_ds.distributed.strategy import StudentEngine
from qr_ds.run_layout import CheckpointDir, CheckpointMeta, RunDir, StudentEntry
from qr_ds.train.config import TrainConfig


class Stateful(Protocol):
    """A component that gives its state as a dict and takes it back: the router policy, the position."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class StudentSlot:
    """What one local student contributes to a checkpoint."""

    name: str
    engine: StudentEngine
    finetune: str  # "lora" | "full"
    tokenizer: Any


def load_state(path) -> Any:
    """``torch.load(weights_only=True)``, refused in one line naming the file: torch's refusal of a
    pickle that would run code is a dozen lines of advice, and a cut-short file an EOFError with no name."""
    import pickle

    try:
        return torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"{path}: refused: not a weights-only state file ({first})") from None


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
    """Owns the run's checkpoints: when to save (every ``save_every`` and ``eval.every_steps`` step, and
    the last), what each holds, which to keep (``keep_last``, and any an evaluation still reads: the
    evaluator says which), and the resume from ``latest``. Every rank makes the same calls."""

    def __init__(self, run: RunDir, strategy, cfg: TrainConfig, total_steps: int, students: list[StudentSlot],
                 position: Stateful, components: dict[str, Stateful], evaluator=None,
                 log: Callable[[str], None] = print):
        """``position`` is saved as JSON and restored on every rank; ``components`` (coordinator state
        such as the router) one ``<key>.pt`` each, on the coordinator; ``evaluator`` (coordinator only)
        gets each checkpoint an evaluation is due for."""
        self.run, self.strategy, self.log = run, strategy, log
        self.save_every, self.eval_every, self.keep_last = cfg.save_every, cfg.eval.every_steps, cfg.keep_last
        self.total_steps = total_steps
        self.students, self.position, self.components, self.evaluator = students, position, components, evaluator
        self.meta = [StudentEntry(s.name, s.model, s.tokenizer or s.model, s.finetune) for s in cfg.students]

    def maybe_save(self, step: int, last: bool = False) -> None:
        """Save when ``step`` is due (always when ``last``) and hand it to the evaluator when an
        evaluation is due. Collective: every rank calls it after every optimizer step."""
        evaluate = last or self._due(self.eval_every, step)
        if not (evaluate or self._due(self.save_every, step)):
            return
        ckpt = self.save(step)
        if self.evaluator is not None and evaluate:
            self.evaluator.submit(ckpt.path, step)

    def _due(self, every: int, step: int) -> bool:
        return bool(every) and step % every == 0 and step < self.total_steps

    def save(self, step: int) -> CheckpointDir:
        """Write every rank's part, then (coordinator) meta.json, 'latest' and pruning. Collective."""
        ckpt = self.run.checkpoint(step)
        ckpt.rng(self.strategy.rank).parent.mkdir(parents=True, exist_ok=True)
        for st in self.students:
            st.engine.save(ckpt.engine(st.name))
            weights = ckpt.weights(st.name, st.finetune)
            weights.parent.mkdir(parents=True, exist_ok=True)
            st.engine.export(weights, ckpt.head(st.name), st.finetune == "full", st.tokenizer)
        torch.save(rng_state(), ckpt.rng(self.strategy.rank))
        if self.strategy.is_coordinator:
            for key, component in self.components.items():
                torch.save(component.state_dict(), ckpt.component(key))
            ckpt.position.write_text(json.dumps(self.position.state_dict()))
        self.strategy.barrier()  # every rank's files are on disk before meta.json and 'latest'
        if self.strategy.is_coordinator:
            ckpt.write_meta(CheckpointMeta(step, self.meta))
            self.run.set_latest(ckpt)
            self._prune()
            self.log(f"saved {ckpt.path}")
        self.strategy.barrier()
        return ckpt

    def _prune(self) -> None:
        protected = self.evaluator.protected() if self.evaluator is not None else set()
        for old in self.run.all_checkpoints()[: -self.keep_last]:
            if old.name not in protected:  # an evaluation still reads it
                shutil.rmtree(old.path, ignore_errors=True)

    def load(self) -> None:
        """Restore engines, this rank's RNG, the position and (coordinator) the components from 'latest'."""
        ckpt = self.run.require_latest()
        for st in self.students:
            st.engine.load(ckpt.engine(st.name), f"student '{st.name}'")
        set_rng_state(load_state(ckpt.rng(self.strategy.rank)))
        if self.strategy.is_coordinator:
            for key, component in self.components.items():
                component.load_state_dict(load_state(ckpt.component(key)))
        position = json.loads(ckpt.position.read_text())
        self.position.load_state_dict(position)
        self.log(f"resumed from {ckpt.path} at step {position['step']}")
