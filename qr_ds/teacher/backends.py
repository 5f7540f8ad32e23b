"""The teacher backend a config names; the backends import base.py, so the choice lives apart from it."""
from __future__ import annotations

from importlib import import_module

from qr_ds.teacher.base import Teacher
from qr_ds.teacher.config import BACKENDS, TeacherConfig


def make_teacher(cfg: TeacherConfig) -> Teacher:
    if cfg.backend not in BACKENDS:
        raise ValueError(f"no teacher backend {cfg.backend!r}")
    module, _, name = BACKENDS[cfg.backend].partition(":")
    return getattr(import_module(module), name)(cfg)
