"""The teacher backend a config names; the backends import base.py, so the choice lives apart from it."""
from __future__ import annotations

from qr_ds.teacher.base import Teacher
from qr_ds.teacher.config import TeacherConfig


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
