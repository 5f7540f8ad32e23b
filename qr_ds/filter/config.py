"""Typed config of the ``filter`` stage."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qr_ds.config import rule
from qr_ds.teacher.config import TeacherConfig


@dataclass
class FilterConfig:
    pool: Path = field(metadata=rule(help="generated pool JSONL (qr-ds generate's out)"))
    out: Path = field(metadata=rule(help="filtered pool JSONL; retention table beside it (.retention.md/.json)"))
    use_judge: bool = field(default=True, metadata=rule(help="run step 2 (LLM judge); false keeps all correct paths"))
    judge: TeacherConfig = field(default_factory=lambda: TeacherConfig(backend="scripted"),
                                 metadata=rule(help="judge backend and model (any teacher backend)"))
    judge_retries: int = field(default=2, metadata=rule(min=0, max=20, help="re-asks when a verdict cannot be parsed"))
    keep_unparseable: bool = field(default=False, metadata=rule(help="keep paths whose verdict stayed unparseable"))
