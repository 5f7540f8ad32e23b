"""Where a training run keeps its files: the one place that knows the names.

``RUN/`` holds ``config.yaml``, ``metrics.jsonl``, ``eval.jsonl``, ``tb/`` (TensorBoard), ``ranks/``
(pid files naming a dead rank), ``eval/`` (evaluations during training) and ``checkpoints/``:

``checkpoints/step_000100/``: ``meta.json`` (written last in a checkpoint), ``students/<name>/``
(``adapter/`` for a LoRA student or ``model/`` for a fully trained one, each with the student's
tokenizer, plus ``mutual_head.pt``), ``engines/<name>/`` (DeepSpeed state), ``rng/rank<r>.pt``,
``<component>.pt`` (coordinator state such as the router) and ``position.json`` (data position).
``checkpoints/latest`` names the newest complete checkpoint and is replaced atomically and durably.
Trainer, evaluation, report, demo and tests ask this module, also the way back (the checkpoint of a
student's weights, the run of a checkpoint); none rebuilds a path by hand.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

WEIGHTS_DIR = {"lora": "adapter", "full": "model"}  # under students/<name>/, by StudentConfig.finetune


def step_name(step: int) -> str:
    """``step_000100``: a checkpoint's folder name, and that of anything else kept per step."""
    return f"step_{step:06d}"


@dataclass(frozen=True)
class StudentEntry:
    """One student in a checkpoint's meta.json: what serving its weights needs."""

    name: str
    model: str  # base model name or dir
    tokenizer: str
    finetune: str = "lora"  # "lora" | "full", by StudentConfig.finetune


@dataclass(frozen=True)
class CheckpointMeta:
    """meta.json, written last in a checkpoint (its presence marks the checkpoint complete)."""

    step: int
    students: list[StudentEntry]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> CheckpointMeta:
        """Tolerant of older checkpoints: no step is -1, no finetune is LoRA, no tokenizer is the model's."""
        meta = json.loads(text)
        students = [StudentEntry(st["name"], st["model"], st.get("tokenizer") or st["model"], st.get("finetune", "lora"))
                    for st in meta.get("students", [])]
        return cls(int(meta.get("step", -1)), students)


@dataclass(frozen=True)
class CheckpointDir:
    path: Path

    @classmethod
    def of_weights(cls, weights: Path) -> CheckpointDir:
        """The checkpoint holding a student's weights folder (``students/<name>/{adapter,model}``)."""
        return cls(Path(weights).parents[2])

    @property
    def run(self) -> RunDir:
        return RunDir(self.path.parents[1])

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

    def write_meta(self, meta: CheckpointMeta) -> None:
        self.meta.write_text(meta.to_json())

    def read_meta(self) -> CheckpointMeta:
        return CheckpointMeta.from_json(self.meta.read_text())

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

    def training_pool(self) -> Path | None:
        """The teacher's path pool the run trained on: config.yaml's data.pool, else RUN/pool.jsonl."""
        import yaml

        if self.config.is_file():
            pool = ((yaml.safe_load(self.config.read_text()) or {}).get("data") or {}).get("pool")
            if pool and Path(pool).is_file():
                return Path(pool)
        local = self.root / "pool.jsonl"
        return local if local.is_file() else None

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
