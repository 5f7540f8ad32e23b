"""Typed configs for the teacher backends and the ``generate`` stage."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from qr_ds.config import ConfigError, rule

# backend -> its Teacher as "module:Class", imported only when a config names it, so a backend's
# dependencies load only for the runs that use it. "scripted" is the synthetic demo's stand-in, not a model.
BACKENDS = {"openai": "qr_ds.teacher.openai_http:OpenAITeacher", "vllm": "qr_ds.teacher.local:VllmTeacher",
            "hf": "qr_ds.teacher.local:HFTeacher", "scripted": "qr_ds.teacher.scripted:ScriptedTeacher"}
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
KEY_PREFIXES = ("sk-", "sk_", "AIza", "hf_", "gsk_", "xai-", "pk-", "ghp_", "Bearer ")


def looks_like_a_key(name: str) -> bool:
    """A value pasted where an env var's name belongs: not a name, or a provider's key prefix and length."""
    return not ENV_NAME.fullmatch(name) or (name.startswith(KEY_PREFIXES) and len(name) >= 20) or len(name) > 64


def split_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """(the URL without ``user:password@``, (user, password) or None): what is stored and printed
    never holds the credentials; they go only into the request's Authorization header."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=host)), (unquote(user), unquote(password))


def log_path(out: Path) -> Path:
    """Every try of every path, beside the pool: generate resumes from it."""
    return out.with_name(out.stem + ".log.jsonl")


@dataclass
class SamplingConfig:
    temperature: float = field(default=0.7, metadata=rule(min=0.0, max=2.0, help="sampling temperature"))
    top_p: float = field(default=1.0, metadata=rule(min=0.0, max=1.0, help="nucleus sampling mass"))
    max_tokens: int = field(default=1024, metadata=rule(min=1, help="cap on generated tokens per path"))
    seed: int = field(default=0, metadata=rule(help="base seed; each path gets its own derived seed"))


@dataclass
class ScriptedConfig:
    """Error rates of the scripted stand-in teacher (synthetic task only)."""

    wrong_rate: float = field(default=0.25, metadata=rule(min=0.0, max=1.0, help="base rate of misreading 'doubles them' as 'adds two' in a doubling question's path (the one wrong rule), scaled per style (quick styles x3, long x0.4)"))
    spurious_rate: float = field(default=0.2, metadata=rule(min=0.0, max=1.0, help="base rate of a right-answer path with a false intermediate value that later steps use, scaled per style"))
    unparseable_rate: float = field(default=0.0, metadata=rule(min=0.0, max=1.0, help="fraction of scripted judge replies that state no verdict"))
    harm_styles: list[str] = field(default_factory=list, metadata=rule(help="styles whose doubling paths first misread doubling as adding two, early (inside a short student's context), and correct it only after a long check: right final answer, judged valid, but a wrong rule to a student whose context ends before the correction (the demo's harm variant)"))


@dataclass
class TeacherConfig:
    backend: str = field(default="openai", metadata=rule(choices=tuple(BACKENDS), help="how the teacher is reached"))
    model: str = field(default="", metadata=rule(help="model name (openai), local dir (vllm/hf); scripted: ignored"))
    base_url: str = field(default="https://api.openai.com/v1", metadata=rule(help="OpenAI-compatible endpoint (openai backend)"))
    api_key_env: str | None = field(default=None, metadata=rule(help="name of the env var holding the API key; never logged"))
    concurrency: int = field(default=8, metadata=rule(min=1, max=1024, help="requests in flight (openai backend)"))
    timeout_s: float = field(default=120.0, metadata=rule(min=0.01, help="per-request timeout"))
    max_retries: int = field(default=4, metadata=rule(min=0, max=50, help="retries after the first try on 429/5xx/timeouts/bad bodies"))
    backoff_s: float = field(default=1.0, metadata=rule(min=0.0, help="first backoff; doubles per retry, with jitter"))
    backoff_max_s: float = field(default=60.0, metadata=rule(min=0.0, help="cap on one backoff wait"))
    batch_size: int = field(default=16, metadata=rule(min=1, help="prompts per batch (vllm, hf)"))
    dtype: str = field(default="auto", metadata=rule(choices=("auto", "float32", "bfloat16", "float16"), help="weights dtype (vllm, hf); float32 on CPU"))
    max_model_len: int = field(default=4096, metadata=rule(min=16, help="context length (vllm)"))
    gpu_memory_utilization: float = field(default=0.5, metadata=rule(min=0.01, max=1.0, help="vllm memory fraction (host RAM on CPU)"))
    enforce_eager: bool = field(default=False, metadata=rule(help="vllm: no CUDA graphs / compilation (set on CPU)"))
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    scripted: ScriptedConfig = field(default_factory=ScriptedConfig)

    def validate(self, key: str = "") -> None:
        where = f"{key}." if key else ""
        if self.backend != "scripted" and not self.model:
            raise ConfigError(f"config key '{where}model' is required for backend '{self.backend}'")
        if self.api_key_env is not None and looks_like_a_key(self.api_key_env):
            raise ConfigError(f"config key '{where}api_key_env': the value looks like an API key, not the name of an "
                              "env var holding one (it is not shown here); export the key in a variable, e.g. "
                              "OPENAI_API_KEY, and give that name")
        # a plain attribute, not a field: to_dict, asdict and repr never see the credentials
        self.base_url, self.credentials = split_userinfo(self.base_url)
        if self.backend == "openai":
            parts = urlsplit(self.base_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(f"config key '{where}base_url': {self.base_url!r} is not an http(s) URL; "
                                  "write it in full, e.g. http://127.0.0.1:8000/v1 or https://api.openai.com/v1")


@dataclass
class GenerateConfig:
    task: str = field(metadata=rule(help="task name (qr-ds tasks lists them)"))
    data: Path = field(metadata=rule(help="dataset file the task loads (.jsonl/.json/.parquet), or a hub dataset "
                                          "name (name or name:config)"))
    out: Path = field(metadata=rule(help="output pool JSONL; the append-only log is <out>.log.jsonl"))
    split: str | None = field(default=None, metadata=rule(help=(
        "hub: the split to load (default 'train'); a file: the split it holds (default: the source_split its "
        "records carry, written by `qr-ds data export`). A test split is refused unless allow_test_split")))
    dataset_config: str | None = field(default=None, metadata=rule(help="hub: the dataset configuration "
                                                                        "(default: the task's)"))
    allow_test_split: bool = field(default=False, metadata=rule(help=(
        "generate paths for a test split anyway: students trained on them must never be evaluated on it")))
    limit: int | None = field(default=None, metadata=rule(min=1, help="first N questions only"))
    samples_per_style: int = field(default=1, metadata=rule(min=1, max=1000, help="k paths per style per question"))
    styles: list[str] | None = field(default=None, metadata=rule(help="styles to use (default: all templates)"))
    baseline: str | None = field(default=None, metadata=rule(help=(
        "a Table 1 baseline (qr_ds/data/baselines.py): its styles instead of the six, e.g. cot and the question "
        "writer; `qr-ds derive` then has the teacher solve the written questions")))
    templates: dict[str, str] = field(default_factory=dict, metadata=rule(help="extra or overriding style templates, with {question}"))
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    min_success_share: float = field(default=0.5, metadata=rule(min=0.0, max=1.0, help=(
        "the run fails (exit 1, with a summary) when fewer of the planned paths have a response; "
        "none at all always fails")))

    def validate(self, key: str = "") -> None:
        from qr_ds.tasks import get_task

        try:  # first: an unknown task is the mistake, not the teacher that cannot write it
            get_task(self.task)
        except ValueError as e:
            raise ConfigError(f"config key 'task': {e}") from None
        if self.teacher.backend == "scripted" and self.task != "synthetic":  # its canned paths state the gold
            raise ConfigError(f"config key 'teacher.backend': the scripted stand-in teacher writes paths for the "
                              f"synthetic task only, not {self.task!r} (its paths would put the gold into training data)")
        for name, tpl in self.templates.items():
            if "{question}" not in tpl:
                raise ConfigError(f"config key 'templates.{name}': template has no {{question}} placeholder")
        from qr_ds.data.baselines import BASELINES

        if self.baseline is not None:
            if self.baseline not in BASELINES:
                raise ConfigError(f"config key 'baseline': unknown baseline {self.baseline!r}; known: "
                                  f"{', '.join(BASELINES)}")
            if self.styles is not None:
                raise ConfigError(f"config key 'styles': baseline {self.baseline} names its own styles "
                                  f"({', '.join(BASELINES[self.baseline].styles)}); leave one of the two keys out")
            if self.samples_per_style < BASELINES[self.baseline].min_samples:
                raise ConfigError(f"config key 'samples_per_style': baseline {self.baseline} samples each question "
                                  f"several times: give k >= {BASELINES[self.baseline].min_samples}")
        if self.styles is not None and not self.styles:
            raise ConfigError("config key 'styles': an empty list names no style; leave the key out for all "
                              "of them, or list the ones to use")
        known = set(self.style_templates(all_styles=True))
        for s in self.styles or []:
            if s not in known:
                raise ConfigError(f"config key 'styles': unknown style {s!r}; known: {', '.join(sorted(known))}")

    def files(self) -> tuple[dict[str, Path], dict[str, Path]]:
        """(outputs, inputs), each by the config key that names it: stages refuse an output that is an input."""
        return {"out": self.out, "out (its request log)": log_path(self.out)}, {"data": Path(self.data)}

    def style_templates(self, all_styles: bool = False) -> dict[str, str]:
        """The templates this run asks for: ``styles``, else the baseline's, else the six and any added."""
        from qr_ds.data.baselines import BASELINES
        from qr_ds.data.styles import BASELINE_TEMPLATES, DEFAULT_TEMPLATES

        tpl = {**DEFAULT_TEMPLATES, **self.templates}
        known = {**BASELINE_TEMPLATES, **tpl}
        if all_styles:
            return known
        chosen = self.styles or (BASELINES[self.baseline].styles if self.baseline else None)
        return {s: known[s] for s in chosen} if chosen else tpl
