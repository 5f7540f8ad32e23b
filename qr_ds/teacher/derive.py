"""``qr-ds derive``: the second call of the question-writing baselines (Rephrase Question, Question Aug,
RevThink; qr_ds/data/baselines.py). After ``qr-ds generate`` with ``baseline:`` set, every written
question in the pool is solved by the teacher in its writer's solve style, with the gold it carries,
into ``<out>.<writer>.jsonl`` (resumable, like generate). Then ``<out>.baseline.jsonl`` gets the
pool's paths and the solved questions' paths, each marked with the training task it serves: the
pool that ``qr-ds filter`` checks next, so a written question is used only when the answer of its
solution agrees with its gold and the judge passes its steps.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from collections import Counter
from pathlib import Path

from qr_ds.data.baselines import MAIN, WRITERS, written_question
from qr_ds.data.pool import PathRecord, iter_pool, write_pool
from qr_ds.stages import add_stage_args, load_stage_config, stage_overrides
from qr_ds.tasks.base import Example
from qr_ds.teacher.base import Teacher
from qr_ds.teacher.config import GenerateConfig
from qr_ds.teacher.generate import generate, print_summary


def solved_path(cfg: GenerateConfig, writer: str) -> Path:
    return cfg.out.with_name(f"{cfg.out.stem}.{writer}.jsonl")


def baseline_pool(cfg: GenerateConfig) -> Path:
    return cfg.out.with_name(f"{cfg.out.stem}.baseline.jsonl")


def written_examples(pool: list[PathRecord], counts: Counter) -> dict[str, list[Example]]:
    """Per writer, the questions its replies hold, each with its gold and where it came from."""
    out: dict[str, list[Example]] = {}
    for r in pool:
        if r.style not in WRITERS or not r.ok:
            continue
        found = written_question(r.style, r.response, r.gold)
        counts["written" if found else "no question in the reply"] += 1
        if found:
            choices = r.meta.get("choices")
            out.setdefault(r.style, []).append(Example(
                id=r.id, task=r.task, question=found[0], gold=found[1], level=r.level,
                choices=[tuple(c) for c in choices] if choices else None,
                meta={"source_id": r.question_id, "source_question": r.question, "writer": r.style}))
    return out


def derive(cfg: GenerateConfig, teacher: Teacher | None = None, progress: bool = True) -> Counter:
    """Solve every written question, then write the baseline's pool; the counts of what happened."""
    if not any(s in WRITERS for s in cfg.style_templates()):
        raise ValueError(f"config key 'baseline': {cfg.baseline or 'none is set, and no style'} writes no questions, "
                         "so there is nothing to derive: filter generate's pool (out) directly")
    if not cfg.out.is_file():
        raise FileNotFoundError(f"{cfg.out}: no pool yet; run `qr-ds generate` with this config first")
    pool = list(iter_pool(cfg.out))
    counts: Counter = Counter()
    paths = [r for r in pool if r.style not in WRITERS]
    for writer, examples in written_examples(pool, counts).items():
        solve = dataclasses.replace(cfg, out=solved_path(cfg, writer), styles=[WRITERS[writer].solve_style],
                                    baseline=None, samples_per_style=1)
        stats = generate(solve, teacher, progress, examples=examples)
        print_summary(stats, solve.out)
        task = WRITERS[writer].train_task
        paths += [dataclasses.replace(r, train_task=None if task == MAIN else task) for r in iter_pool(solve.out)]
        counts["solved"] += stats.succeeded
    write_pool(baseline_pool(cfg), paths)
    return counts


def register(subparsers) -> None:
    p = subparsers.add_parser("derive", help="solve the questions a baseline's writer wrote (Table 1 baselines)",
                              description=__doc__)
    add_stage_args(p, "GenerateConfig", "generate")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_stage_config(GenerateConfig, args.config, "generate", stage_overrides(args))
    counts = derive(cfg, progress=not args.no_progress)  # StageFailed: qr_ds.cli says it, never exit 0
    print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + f"; pool for `qr-ds filter`: {baseline_pool(cfg)}",
          file=sys.stderr)
    return 0
