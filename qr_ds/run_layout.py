"""Where a training run keeps its files: the one place that knows the names.

``RUN/`` holds ``config.yaml``, ``metrics.jsonl``, ``eval.jsonl``, ``tb/`` (TensorBoard), ``ranks/``
(pid files naming a dead rank), ``eval/`` (evaluations during training) and ``checkpoints/``:

``checkpoints/step_000100/``: ``meta.json`` (written last in a checkpoint), ``students/<name>/``
(``adapter/`` for a LoRA student or ``model/`` for a fully trained one, each with the student's
tokenizer, plus ``mutual_head.pt``), ``engines/<name>/`` (DeepSpeed state), ``rng/rank<r>.pt``,
``<component>.pt`` (coordinator state such as the router) and ``position.json`` (data position).
``checkpoints/latest`` names the newest complete checkpoint and is replaced atomically and durably.
Trainer, evaluation, demo and tests ask this module; none rebuilds a path by hand.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

WEIGHTS_DIR = {"lora": "adapter", "full": "model"}  # under students/<name>/, by StudentConfig.finetune


def step_name(step: int) -> str:
    """``step_000100``: a checkpoint's folder name, and that of anything else kept per step."""
    return f"step_{step:06d}"


@dataclass(frozen=True)
class CheckpointDir:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def step(self) -> int:
        return int(self.path.name.removeprefix("step_"))

    @property
    def meta(self) -> Path:
        return self.path / "meta.json"

    @property
    def position(self) -> Path:
        return self.path / "position.json"

    def student(self, name: str) -> Path:
        return self.path / "students" / name

    def weights(self, name: str, finetune: str) -> Path:
        """The folder peft / transformers / vLLM load: the adapter, or the whole model."""
        return self.student(name) / WEIGHTS_DIR[finetune]

    def head(self, name: str) -> Path:
        return self.student(name) / "mutual_head.pt"

    def engine(self, name: str) -> Path:
        return self.path / "engines" / name

    def rng(self, rank: int) -> Path:
        return self.path / "rng" / f"rank{rank}.pt"

    def component(self, key: str) -> Path:
        return self.path / f"{key}.pt"


class RunDir:
    def __init__(self, root: Path):
        self.root = Path(root)

    config = property(lambda self: self.root / "config.yaml")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    eval_log = property(lambda self: self.root / "eval.jsonl")
    tensorboard = property(lambda self: self.root / "tb")
    ranks = property(lambda self: self.root / "ranks")
    evaluations = property(lambda self: self.root / "eval")
    checkpoints = property(lambda self: self.root / "checkpoints")

    def checkpoint(self, step: int) -> CheckpointDir:
        return CheckpointDir(self.checkpoints / step_name(step))

    def latest(self) -> CheckpointDir | None:
        marker = self.checkpoints / "latest"
        return CheckpointDir(self.checkpoints / marker.read_text().strip()) if marker.is_file() else None

    def require_latest(self) -> CheckpointDir:
        ckpt = self.latest()
        if ckpt is None:
            raise FileNotFoundError(f"run dir {self.root}: no checkpoints/latest file (no complete checkpoint)")
        return ckpt

    def complete(self) -> list[CheckpointDir]:
        """Checkpoints whose meta.json was written, oldest first."""
        return [CheckpointDir(p) for p in sorted(self.checkpoints.glob("step_*")) if (p / "meta.json").is_file()]

    def all_checkpoints(self) -> list[CheckpointDir]:
        return [CheckpointDir(p) for p in sorted(self.checkpoints.glob("step_*")) if p.is_dir()]

    def set_latest(self, ckpt: CheckpointDir) -> None:
        """Write-temp, fsync, rename, fsync the folder: after a power cut 'latest' names either the
        old checkpoint or the new one, never an empty file."""
        tmp = self.checkpoints / "latest.tmp"
        with open(tmp, "w") as fh:
            fh.write(ckpt.name)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.checkpoints / "latest")
        fd = os.open(self.checkpoints, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
