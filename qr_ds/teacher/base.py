"""What every teacher backend consumes and returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

from qr_ds.stages import StageFailed


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


class TeacherRefused(StageFailed):
    """The endpoint refused us (401/403/404): every further request would fail the same way."""


class TeacherUnreachable(TeacherRefused):
    """No server ever answered at the configured address: the config's to fix, so bad input (exit 2)."""

    status = 2


class Teacher(Protocol):
    model: str

    def run(self, requests: Iterable[Request], on_done: OnDone) -> None:
        """Complete every request, calling ``on_done`` as each finishes (any order)."""
