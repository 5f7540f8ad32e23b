"""Find checkpoints and their student adapters, and refuse ones that cannot be served correctly.

Layout (qr_ds/run_layout.py): a checkpoint's ``meta.json`` (CheckpointMeta) lists the students (name,
base model, tokenizer, finetune); each has a PEFT adapter folder, or whole weights for a fully
fine-tuned student.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qr_ds.models.packaged import resolve
from qr_ds.run_layout import CheckpointDir, RunDir, read_json_object


@dataclass(frozen=True)
class Adapter:
    checkpoint: str  # "step_000100"
    step: int
    student: str
    model: str  # base model name or dir, from meta.json
    tokenizer: str
    path: Path  # the PEFT adapter dir, or the whole model's dir when ``full``
    rank: int  # 0 when ``full``
    full: bool = False  # fully fine-tuned: served by swapping the engine's weights, not as a LoRA


def checkpoints_of_run(run_dir: Path, which: str = "latest") -> list[Path]:
    run = RunDir(run_dir)
    if not run.checkpoints.is_dir():
        raise FileNotFoundError(f"run dir {run_dir}: no checkpoints/ folder")
    if which == "latest":
        return [run.require_latest().path]
    found = [c.path for c in run.complete()]
    if not found:
        raise FileNotFoundError(f"run dir {run_dir}: no complete checkpoint (step_*/meta.json)")
    return found


def adapter_rank(config: dict) -> int:
    """The largest LoRA rank in a PEFT adapter_config (rank_pattern can raise it per module)."""
    return max([int(config.get("r", 0)), *map(int, (config.get("rank_pattern") or {}).values())])


def _same_model(a: str, b: str) -> bool:
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a.rstrip("/") == b.rstrip("/")


def read_checkpoint(ckpt: Path) -> list[Adapter]:
    """The student adapters of one checkpoint, each checked: present, PEFT LoRA, on the meta's base."""
    ckpt = Path(ckpt)
    meta_path = CheckpointDir(ckpt).meta
    if not meta_path.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt}: no meta.json (not a checkpoint dir, or an incomplete one)")
    meta = CheckpointDir(ckpt).read_meta()
    step = meta.step
    out = []
    for st in meta.students:
        # a GGUF student (packaged:<name>, .gguf) is served from the same converted folder it trained on
        name, model, tokenizer = st.name, resolve(st.model), resolve(st.tokenizer)
        if st.finetune == "full":
            out.append(_full_model(ckpt, step, name, model, tokenizer))
            continue
        path = CheckpointDir(ckpt).weights(name, "lora")
        cfg_path = path / "adapter_config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"checkpoint {ckpt}: adapter of student '{name}' missing ({cfg_path} not found)")
        refuse_pickles(path)
        cfg = read_json_object(cfg_path)
        if cfg.get("peft_type", "LORA") != "LORA":
            raise ValueError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r}; only LoRA adapters can be served")
        base = cfg.get("base_model_name_or_path")
        if base and not _same_model(base, model):
            raise ValueError(f"{cfg_path}: adapter of student '{name}' was trained on base model {base!r}, "
                             f"but {meta_path} serves it on {model!r}")
        out.append(Adapter(ckpt.name, step, name, model, tokenizer, path, adapter_rank(cfg)))
    if not out:
        raise ValueError(f"{meta_path}: lists no students")
    return out


# Weight files in pickle format: loading one may run code it holds. The trainer writes safetensors only.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def refuse_pickles(weights: Path) -> None:
    """Refuse a student's weights folder that holds a pickled weights file, naming it: what the
    engine would load from it is not what the trainer wrote."""
    found = sorted(p.name for p in weights.iterdir() if p.suffix in PICKLE_SUFFIXES) if weights.is_dir() else []
    if found:
        raise ValueError(f"{weights / found[0]}: a pickled weights file, which loading could run code from; "
                         "a checkpoint's student weights are safetensors only: remove it or re-save as safetensors")


SHAPE_KEYS = ("architectures", "hidden_size", "num_hidden_layers", "vocab_size")


def _full_model(ckpt: Path, step: int, name: str, model: str, tokenizer: str) -> Adapter:
    """A fully fine-tuned student's weights, checked to fit the base model's engine."""
    path = CheckpointDir(ckpt).weights(name, "full")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt}: weights of student '{name}' missing ({cfg_path} not found)")
    refuse_pickles(path)
    mine = read_json_object(cfg_path)
    base_cfg = Path(model) / "config.json"
    if base_cfg.is_file():  # a hub name is checked by the engine when it loads the weights
        base = read_json_object(base_cfg)
        bad = [k for k in SHAPE_KEYS if mine.get(k) != base.get(k)]
        if bad:
            raise ValueError(f"{cfg_path}: student '{name}' does not have the shape of its base model {model!r} "
                             f"({', '.join(f'{k}: {mine.get(k)!r} vs {base.get(k)!r}' for k in bad)})")
    return Adapter(ckpt.name, step, name, model, tokenizer, path, 0, full=True)
