"""Writes docs/config-reference.md from the typed configs themselves, so the reference cannot drift.

    python -m qr_ds.configdoc > docs/config-reference.md   (a test checks the file is current)
"""
from __future__ import annotations

from qr_ds.config import describe

SECTIONS = [
    ("Training (`deepspeed launch/train.py --config`, `qr-ds train`)", "qr_ds.train.config", "TrainConfig"),
    ("Generation (`qr-ds generate`; a pipeline YAML's `generate:`)", "qr_ds.teacher.config", "GenerateConfig"),
    ("Filtering (`qr-ds filter`; `filter:`)", "qr_ds.filter.config", "FilterConfig"),
    ("Embedding (`qr-ds embed`; `embed:`)", "qr_ds.embed.config", "EmbedConfig"),
    ("Evaluation (`qr-ds eval --config`)", "qr_ds.eval.config", "EvalConfig"),
]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    import importlib

    out = ["# Config reference", "",
           "Generated from the config dataclasses by `python -m qr_ds.configdoc`; do not edit by hand.",
           "Unknown keys, wrong types and out-of-range values are refused at load, naming the key.", ""]
    for title, module, cls in SECTIONS:
        rows = describe(getattr(importlib.import_module(module), cls))
        out += [f"## {title}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        out += [f"| `{k}` | {_cell(t)} | `{d}` | {_cell(h)} |" for k, t, d, h in rows]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
