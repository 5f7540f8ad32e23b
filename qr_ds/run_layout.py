"""Where a training run keeps its files: the one place that knows the names.

``RUN/`` holds ``config.yaml``, ``metrics.jsonl``, ``eval.jsonl``, ``tb/`` (TensorBoard), ``ranks/``
(pid files naming a dead rank), ``eval/`` (evaluations during training), ``prepared/`` (the prepared
training data, unless configured elsewhere), maybe ``pool.jsonl`` (the pool it trained on) and
``checkpoints/``:

``checkpoints/step_000100/``: ``meta.json`` (written last in a checkpoint), ``students/<name>/``
(``adapter/`` for a LoRA student or ``model/`` for a fully trained one, each with the student's
tokenizer, plus ``mutual_head.pt``), ``engines/<name>/`` (DeepSpeed state), ``rng/rank<r>.pt``,
``<component>.pt`` (coordinator state such as the router) and ``position.json`` (data position).
``checkpoints/latest`` names the newest complete checkpoint and is replaced atomically and durably.
Trainer, evaluation, report, demo and tests ask this module, also the way back (the checkpoint of a
student's weights, the run of a checkpoint); none rebuilds a path by hand. A training run's ``RunDir``
is its config's (``TrainConfig.run``): launch, preflight, the trainer and the prepared data ask that one.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

WEIGHTS_DIR = {"lora": "adapter", "full": "model"}  # under students/<name>/, by StudentConfig.finetune


STEP_NAME = re.compile(r"step_\d{6,}")


def plain_name(name: str, what: str, where: Path) -> str:
    """``name`` if it is one path component that stays in its folder; these names come from files
    (meta.json, checkpoints/latest) that anyone may have edited."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"{where}: {what} {name!r} is not a plain folder name (it would leave the run folder)")
    return name


def inside(path: Path, folder: Path, named_in: Path) -> Path:
    """``path`` if it resolves (symlinks followed) inside ``folder``; ValueError naming the file the
    name was read from, since a name that stays in its folder lexically may still be a link out."""
    target, owner = path.resolve(), folder.resolve()
    if not target.is_relative_to(owner):
        raise ValueError(f"{named_in}: names {path.name!r}, which resolves to {target}, outside {owner}: refused")
    return path


def json_text(path: Path) -> str:
    """The text of a JSON file a checkpoint holds, refused with one line naming file:line when it is
    not UTF-8 or not valid JSON (cut short by a kill, or edited by hand)."""
    try:
        text = path.read_bytes().decode("utf-8")
        json.loads(text)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno}): "
                         "a checkpoint cut short or edited by hand") from None
    return text


def read_json_object(path: Path) -> dict:
    """``json_text`` parsed, refused naming the file unless it is one JSON object."""
    data = json.loads(json_text(path))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


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

    @classmethod
    def read(cls, path: Path) -> CheckpointMeta:
        """``from_json`` of the file, refused with one line naming it when it is cut short, not JSON, not
        of this shape, or names a student that is not a plain folder name."""
        text = json_text(path)
        try:
            meta = cls.from_json(text)
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"{path}: not a checkpoint's meta.json ({type(e).__name__}: {e})") from None
        for st in meta.students:
            plain_name(st.name, "student name", path)
        return meta


@dataclass(frozen=True)
class CheckpointDir:
    path: Path

    @classmethod
    def of_weights(cls, weights: Path) -> CheckpointDir:
        """The checkpoint holding a student's weights folder (``students/<name>/{adapter,model}``)."""
        return cls(Path(weights).absolute().parents[2])

    @property
    def run(self) -> RunDir:
        # absolute: "step_000001" given from inside checkpoints/ has no parents[1] as it is written
        return RunDir(self.path.absolute().parents[1])

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
        return CheckpointMeta.read(self.meta)

    def student(self, name: str) -> Path:
        """``students/<name>``, refused when the name (from meta.json) or a link by that name leaves students/."""
        folder = self.path / "students"
        return inside(folder / plain_name(name, "student name", self.meta), folder, self.meta)

    def weights(self, name: str, finetune: str) -> Path:
        """The folder peft / transformers / vLLM load: the adapter, or the whole model."""
        return inside(self.student(name) / WEIGHTS_DIR[finetune], self.student(name), self.meta)

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
    stop_marker = property(lambda self: self.ranks / "stopped")  # `qr-ds train` was stopped: ranks say so
    evaluations = property(lambda self: self.root / "eval")
    checkpoints = property(lambda self: self.root / "checkpoints")
    latest_marker = property(lambda self: self.checkpoints / "latest")
    prepared = property(lambda self: self.root / "prepared")  # prepared training data, unless configured elsewhere
    pool = property(lambda self: self.root / "pool.jsonl")  # a copy of the pool the run trained on, if kept
    # {"student", "path"} rows: the pairs data.drop_cut_wrong keeps from training, whatever the router says
    kept_from = property(lambda self: self.root / "kept_from_students.jsonl")
    # sha256 of data.pool when the run started: a resume continues its epoch by position, so not over another pool
    pool_digest = property(lambda self: self.root / "pool.sha256")

    def config_before(self, step: int) -> Path:
        """The config.yaml a run had before it was resumed at ``step`` with other settings."""
        return self.root / f"config.before_{step_name(step)}.yaml"

    def is_run(self) -> bool:
        """A training run's folder: checkpoints/ beside its config.yaml or its checkpoints/latest."""
        return self.checkpoints.is_dir() and (self.config.is_file() or self.latest_marker.is_file())

    def training_pool(self) -> Path | None:
        """The teacher's path pool the run trained on: config.yaml's data.pool, else RUN/pool.jsonl."""
        import yaml

        if self.config.is_file():
            pool = ((yaml.safe_load(self.config.read_text()) or {}).get("data") or {}).get("pool")
            if pool and Path(pool).is_file():
                return Path(pool)
        return self.pool if self.pool.is_file() else None

    def checkpoint(self, step: int) -> CheckpointDir:
        return CheckpointDir(self.checkpoints / step_name(step))

    def latest(self) -> CheckpointDir | None:
        """The checkpoint ``checkpoints/latest`` names; ValueError when it names anything but a
        ``step_N`` folder beside it (``../../outside/step_9`` was followed), or one that is a link out."""
        marker = self.latest_marker
        if not marker.is_file():
            return None
        name = marker.read_bytes().decode("utf-8", errors="replace").strip()
        if not STEP_NAME.fullmatch(name):
            raise ValueError(f"{marker}: names {name[:80]!r}, not a step_NNNNNN folder beside it")
        return CheckpointDir(inside(self.checkpoints / name, self.checkpoints, marker))

    def require_latest(self) -> CheckpointDir:
        ckpt = self.latest()
        if ckpt is None:
            raise FileNotFoundError(f"run dir {self.root}: no checkpoints/latest file (no complete checkpoint)")
        return ckpt

    def complete(self) -> list[CheckpointDir]:
        """Checkpoints whose meta.json was written, oldest first."""
        return [c for c in self.all_checkpoints() if c.meta.is_file()]

    def all_checkpoints(self) -> list[CheckpointDir]:
        """Every step folder, each refused (ValueError) when it is a link out of checkpoints/."""
        return [CheckpointDir(inside(p, self.checkpoints, self.checkpoints))
                for p in sorted(self.checkpoints.glob("step_*")) if p.is_dir()]

    def set_latest(self, ckpt: CheckpointDir) -> None:
        """Write-temp, fsync, rename, fsync the folder: after a power cut 'latest' names either the
        old checkpoint or the new one, never an empty file."""
        tmp = self.latest_marker.with_name("latest.tmp")
        with open(tmp, "w") as fh:
            fh.write(ckpt.name)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.latest_marker)
        fd = os.open(self.checkpoints, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
