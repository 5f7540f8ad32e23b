"""Typed config of the ``filter`` stage."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qr_ds.config import ConfigError, rule
from qr_ds.teacher.config import BACKENDS, TeacherConfig

JUDGE_BACKENDS = (*BACKENDS, "none")  # any teacher, or none: skip step 2
HOW_TO_JUDGE = """Name a judge in the filter config (a pipeline YAML's filter: section), e.g.
  judge:                                  # an OpenAI-compatible endpoint (OpenAI, Gemini, `vllm serve`)
    backend: openai
    model: gpt-4o-mini
    base_url: https://api.openai.com/v1
    api_key_env: OPENAI_API_KEY
  judge: {backend: vllm, model: /models/judge}   # a local model in-process (backend: hf also works)
  judge: {backend: none}                         # skip step 2: keep every correct path (same as --no-judge)"""


def judge_log_path(out: Path) -> Path:
    return out.with_name(out.stem + ".judge.jsonl")


def report_paths(out: Path) -> tuple[Path, Path]:
    return out.with_name(out.stem + ".retention.md"), out.with_name(out.stem + ".retention.json")


@dataclass
class JudgeConfig(TeacherConfig):
    # No default backend: a judge that was never named must not silently pass every path.
    backend: str = field(default="", metadata=rule(choices=JUDGE_BACKENDS, help=(
        "required, no default (unset is refused); 'none' skips step 2; 'scripted' is the synthetic demo's "
        "stand-in, refused on other tasks")))

    def validate(self, key: str = "") -> None:
        if self.backend not in ("", "none"):
            super().validate(key)


@dataclass
class FilterConfig:
    pool: Path = field(metadata=rule(help="generated pool JSONL (qr-ds generate's out); ids must be unique"))
    out: Path = field(metadata=rule(help="filtered pool JSONL; retention table beside it (.retention.md/.json)"))
    judge: JudgeConfig = field(default_factory=JudgeConfig, metadata=rule(
        help="the LLM judge of step 2 (any teacher backend); see judge.backend"))
    judge_retries: int = field(default=2, metadata=rule(min=0, max=20, help="re-asks when a verdict cannot be parsed"))
    keep_unparseable: bool = field(default=False, metadata=rule(help=(
        "also keep correct paths whose judge replies stated no verdict. The filtered pool is exactly what is "
        "trained on (the trainer keeps correct paths not judged INVALID), so UNPARSEABLE paths reach training "
        "only when this is true; paths whose judge request failed are never kept")))
    min_success_share: float = field(default=0.5, metadata=rule(min=0.0, max=1.0, help=(
        "the run fails (exit 1, with the table) when fewer of the pool's records have a response or fewer "
        "judge requests got a reply; keeping no path always fails")))

    def files(self) -> tuple[dict[str, Path], dict[str, Path]]:
        """(outputs, inputs), each by the config key that names it: stages refuse an output that is an input."""
        md, js = report_paths(self.out)
        return ({"out": self.out, "out (its judge log)": judge_log_path(self.out), "out (its retention table)": md,
                 "out (its retention JSON)": js}, {"pool": self.pool})

    def validate(self, key: str = "") -> None:
        if not self.judge.backend:
            raise ConfigError(f"config key 'judge.backend' is not set: step 2 needs an LLM judge.\n{HOW_TO_JUDGE}")
