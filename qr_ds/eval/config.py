"""The evaluation config (``configs/eval-*.yaml``; every key can also come from ``qr-ds eval`` flags)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from qr_ds.config import ConfigError, rule


@dataclass
class EvalConfig:
    tasks: dict[str, str] = field(default_factory=dict, metadata=rule(
        help="task name -> data file, or hub dataset name (name or name:config, read at `split`)"))
    split: str | None = field(default=None, metadata=rule(
        help="hub datasets: the split to score (default: the task's evaluation split, 'test' for most)"))
    checkpoints: list[Path] = field(default_factory=list, metadata=rule(help="checkpoint dirs (step_*)"))
    run_dir: Path | None = field(default=None, metadata=rule(help="a training run dir: its checkpoints"))
    which: Literal["latest", "all"] = field(default="latest", metadata=rule(help="checkpoints of run_dir"))
    backend: Literal["auto", "vllm", "hf"] = field(default="auto", metadata=rule(help="auto: vllm when importable"))
    max_new_tokens: int = field(default=256, metadata=rule(min=1))
    limit: int = field(default=0, metadata=rule(min=0, help="first N examples per task (0 = all)"))
    out: Path = Path("runs/eval")
    zero_shot: bool = field(default=True, metadata=rule(help="also score each base model without adapter"))
    teacher_pool: Path | None = field(default=None, metadata=rule(help="pool JSONL; default: the run's pool"))
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_lora_rank: int = field(default=0, metadata=rule(min=0, help="0 = the largest adapter rank"))
    max_model_len: int = field(default=2048, metadata=rule(min=16, help="vLLM: prompt + generation tokens"))
    gpu_memory_utilization: float = field(default=0.8, metadata=rule(min=0.01, max=1.0,
                                          help="vLLM: memory fraction; on CPU the most of host RAM the KV "
                                               "cache may take (it takes what 32 sequences of max_model_len need)"))
    max_loras: int = field(default=8, metadata=rule(min=1, help="vLLM: adapter slots (more adapters are swapped in)"))
    batch_size: int = field(default=16, metadata=rule(min=1, help="hf backend: prompts per generate call"))

    def validate(self, key: str = "") -> None:
        if not self.tasks:
            raise ConfigError("config key 'tasks': give at least one task=data file pair")
        if not self.checkpoints and self.run_dir is None:
            raise ConfigError("config key 'checkpoints': give checkpoint dirs or a run_dir (they name the base models)")
