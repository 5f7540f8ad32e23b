"""Everything DeepSpeed does to one student: its JSON config, the engine, and ``StudentEngine``, all
that the trainer and the checkpointer may ask of an engine (forward, backward, step, lr and grad
norm, ZeRO-3 gathers, saving, loading and exporting). The strategy builds it from a module, an
optimizer and a scheduler; nothing outside this file and strategy.py imports deepspeed.

A DeepSpeed engine state is read with DeepSpeed's own loader, which unpickles: only resume from
checkpoints you wrote (trusted input). Everything else qr_ds writes loads with weights_only=True.
"""
from __future__ import annotations

from contextlib import nullcontext
from importlib.util import find_spec
from pathlib import Path

import torch

from qr_ds.distributed.ds_json import read_ds_json

CHECKOUT = Path(__file__).resolve().parents[2]


def shipped_ds_config(name: str) -> Path | None:
    """``ds_configs/<name>`` shipped with qr_ds: package data when installed, the top-level folder
    of a checkout (or an editable install) otherwise."""
    try:
        spec = find_spec("qr_ds.ds_configs")
    except ModuleNotFoundError:
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in [*map(Path, folders), CHECKOUT / "ds_configs"]:
        if (folder / name).is_file():
            return folder / name
    return None


def find_ds_config(path: str) -> Path | None:
    """A DeepSpeed JSON by its path, or ``ds_configs/<name>`` as shipped with qr_ds."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_absolute() and p.parts[:1] == ("ds_configs",) and len(p.parts) == 2:
        return shipped_ds_config(p.name)
    return None


def resolve_ds_config(path: str, key: str) -> Path:
    if found := find_ds_config(path):
        return found
    raise FileNotFoundError(f"config key '{key}': deepspeed config {path} not found "
                            f"(shipped ones: ds_configs/zero2.json, ds_configs/zero3.json)")


def ds_config(path: Path, micro_batch: int, grad_accum: int, grad_clip: float, dtype: str) -> dict:
    """The student's DeepSpeed JSON, with batch, accumulation, clipping and precision from our config
    (one source of truth: the JSON keeps ZeRO and communication settings)."""
    ds = read_ds_json(path)
    ds.pop("train_batch_size", None)
    ds["train_micro_batch_size_per_gpu"] = micro_batch
    ds["gradient_accumulation_steps"] = grad_accum
    ds["gradient_clipping"] = grad_clip
    ds["bf16"] = {"enabled": dtype == "bfloat16"}
    ds["fp16"] = {"enabled": dtype == "float16"}
    # ZeRO lists torch's and its own Adam as tested; bitsandbytes' AdamW8bit (optimizer: adamw8bit)
    # is a plain torch optimizer over the partitioned fp32 parameters and works as well.
    ds.setdefault("zero_allow_untested_optimizer", True)
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def create_engine(module: torch.nn.Module, optimizer, scheduler, config: dict, mpu):
    import deepspeed

    engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, lr_scheduler=scheduler,
                                      config=config, mpu=mpu, dist_init_required=False)
    return engine


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


class StudentEngine:
    """One student's DeepSpeed engine on this rank; ``writer``: this rank writes the student's
    loadable folder (its first data-parallel rank)."""

    def __init__(self, engine, writer: bool):
        self.engine, self.writer = engine, writer

    def __call__(self, *args):
        return self.engine(*args)

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    @property
    def zero3(self) -> bool:
        return self.engine.zero_optimization_stage() == 3

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        self.engine.step()

    def lr_and_grad_norm(self) -> tuple[float, float]:
        """The learning rate of the model's parameter group and the last step's global gradient norm
        (NaN before the first optimizer step)."""
        norm = self.engine.get_global_grad_norm()
        return float(self.engine.get_lr()[0]), (float(norm) if norm is not None else float("nan"))

    def gathered(self):
        """ZeRO-3 shards parameters: gather the trainable ones before exporting the adapter (or model)."""
        if self.zero3:
            import deepspeed

            return deepspeed.zero.GatheredParameters([p for p in self.module.parameters() if p.requires_grad])
        return nullcontext()

    def save(self, folder: Path) -> None:
        """Module, optimizer and scheduler, without frozen weights: a LoRA student's base model is
        already on disk (its model name) and would otherwise be copied into every checkpoint."""
        self.engine.save_checkpoint(str(folder), tag="state", exclude_frozen_parameters=True)

    def load(self, folder: Path, what: str) -> None:
        # strict=False: the frozen base weights were left out on purpose and are loaded from the model.
        path, _ = self.engine.load_checkpoint(str(folder), tag="state", load_module_strict=False)
        if path is None:
            raise FileNotFoundError(f"--resume: engine state of {what} missing in {folder}")

    def export(self, weights_dir: Path, head_file: Path, full: bool, tokenizer) -> None:
        """The student's loadable folder: PEFT adapter (or whole model) plus its tokenizer, so
        AutoTokenizer / AutoModelForCausalLM / AutoPeftModelForCausalLM / vLLM need no extra argument.
        Every rank of the student joins the ZeRO-3 gather; only the writer writes."""
        module = self.module
        with self.gathered():
            if not self.writer:
                return
            if full:
                save_whole_model(module.lm, weights_dir)
            else:
                module.lm.save_pretrained(str(weights_dir))
            tokenizer.save_pretrained(str(weights_dir))
            if module.head is not None:
                torch.save(module.head.state_dict(), head_file)
