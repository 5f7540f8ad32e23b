"""What every teacher backend consumes and returns, and the factory that picks one from config."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

from qr_ds.teacher.config import TeacherConfig


@dataclass
class Request:
    key: str  # the record id: question_id/style/sample (or a path id, for judge calls)
    prompt: str  # the user message
    seed: int  # per-request seed, derived so a re-run asks the same thing
    context: dict[str, Any] = field(default_factory=dict)  # what a scripted backend needs (example, record)


@dataclass
class Completion:
    text: str | None
    error: str | None = None  # final failure reason; text is None then
    tokens_in: int = 0
    tokens_out: int = 0
    tries: int = 1
    finish_reason: str | None = None


OnDone = Callable[[Request, Completion], None]


class StageFailed(RuntimeError):
    """A stage run that must not look like success; the message is what the user is told."""


class TeacherRefused(StageFailed):
    """The endpoint refused us (401/403/404): every further request would fail the same way."""


class Teacher(Protocol):
    model: str

    def run(self, requests: Iterable[Request], on_done: OnDone) -> None:
        """Complete every request, calling ``on_done`` as each finishes (any order)."""


def derive_seed(base: int, *parts: object) -> int:
    """A stable 31-bit seed from a base seed and a key (Python's hash() changes per process)."""
    h = hashlib.sha256("|".join(map(str, (base, *parts))).encode()).digest()
    return int.from_bytes(h[:4], "big") & 0x7FFFFFFF


def make_teacher(cfg: TeacherConfig) -> Teacher:
    if cfg.backend == "openai":
        from qr_ds.teacher.openai_http import OpenAITeacher

        return OpenAITeacher(cfg)
    if cfg.backend == "vllm":
        from qr_ds.teacher.local import VllmTeacher

        return VllmTeacher(cfg)
    if cfg.backend == "hf":
        from qr_ds.teacher.local import HFTeacher

        return HFTeacher(cfg)
    if cfg.backend == "scripted":  # only when a config names it: it is a stand-in, not a model
        from qr_ds.teacher.scripted import ScriptedTeacher

        return ScriptedTeacher(cfg)
    raise ValueError(f"no teacher backend {cfg.backend!r}")
