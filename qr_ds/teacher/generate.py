"""Resumable, lossless path generation: every (question, style, sample) ends as one pool record.

Each finished request is appended to ``<out>.log.jsonl`` (flushed and fsync'ed) as it arrives,
so a kill loses only requests in flight. A re-run skips keys that already have a response and
retries those recorded as failed. The log is the source of truth; the pool at ``out`` is its
compaction: one record per key (the latest success, else the latest failure), in plan order.
A key is (record id, teacher model, sampling parameters): changing either asks again.

A file at ``out`` that generate did not write (no log beside it, or a filtered or embedded pool) is
refused, in ``--plan`` too: the compaction would replace it without a word.

A run holds ``<out>.lock`` (a second run on the same output is refused) and fails with
TooFewSucceeded when less than ``min_success_share`` of the planned paths have a response, so a
dead server or a bad key cannot end in exit 0 with an empty pool. An empty reply is a failure.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from qr_ds.config import ConfigError
from qr_ds.data.baselines import WRITERS
from qr_ds.data.jsonl import JsonlAppender, repair_tail
from qr_ds.data.pool import PathRecord, iter_pool, parse_record, write_pool
from qr_ds.stages import StageFailed, derive_seed, output_lock
from qr_ds.tasks.base import Example, LoadedExamples, Task, is_file_source, is_test_split
from qr_ds.teacher.backends import make_teacher
from qr_ds.teacher.base import Completion, Request, Teacher
from qr_ds.teacher.config import GenerateConfig, TeacherConfig, log_path

Key = tuple[str, str, str]


@dataclass
class GenerateStats:
    planned: int = 0
    skipped: int = 0  # already done in an earlier run
    succeeded: int = 0  # paths in the written pool that have a response (this run's and earlier ones)
    requests: int = 0
    tries: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    failures: Counter = field(default_factory=Counter)  # reason -> count

    def summary(self) -> str:
        lines = [
            f"paths planned {self.planned}, already done {self.skipped}, requested {self.requests} "
            f"({self.tries} tries), failed {sum(self.failures.values())}",
            f"tokens in {self.tokens_in}, tokens out {self.tokens_out}",
            f"pool: {self.succeeded} of {self.planned} paths have a response",
        ]
        lines += [f"  failed: {n} x {reason}" for reason, n in self.failures.most_common()]
        return "\n".join(lines)


class TooFewSucceeded(StageFailed):
    """Less than ``min_success_share`` of the planned paths have a response."""


def sampling_params(cfg: TeacherConfig) -> dict:
    return asdict(cfg.sampling)


def record_key(rec: PathRecord) -> Key:
    return rec.id, rec.teacher, json.dumps(rec.sampling, sort_keys=True)


def load_questions(cfg: GenerateConfig) -> LoadedExamples:
    """The questions to ask the teacher about; a test split is refused (before any download), since
    its paths would train students on the questions they are scored on."""
    from qr_ds.tasks import get_task

    task = get_task(cfg.task)
    if not is_file_source(cfg.data):
        refuse_test_split(cfg, task, cfg.split or "train")
        return task.load(str(cfg.data), split=cfg.split or "train", config=cfg.dataset_config, limit=cfg.limit)
    examples = task.load(str(cfg.data), limit=cfg.limit)  # records the split the file's records carry
    refuse_test_split(cfg, task, file_split(cfg, examples.split))
    return examples


def refuse_test_split(cfg: GenerateConfig, task: Task, split: str | None) -> None:
    if is_test_split(task, split) and not cfg.allow_test_split:
        raise ConfigError(
            f"config key 'split': {cfg.data} is split {split!r} of {task.name}, a test split; paths generated "
            f"from it would train students on the questions they are evaluated on. Generate from a train split "
            f"(`qr-ds data export {task.name} --split train --out FILE`), or set allow_test_split: true")


def file_split(cfg: GenerateConfig, recorded: str | None) -> str | None:
    """The split a data file holds: what its records say, which the config may repeat but not contradict."""
    if cfg.split and recorded and cfg.split != recorded:
        raise ConfigError(f"config key 'split': {cfg.split!r}, but the records of {cfg.data} say they come from "
                          f"split {recorded!r} (their source_split)")
    return cfg.split or recorded


def plan(cfg: GenerateConfig, model: str, examples: list[Example]) -> tuple[list[Request], dict[str, PathRecord]]:
    """Every request of the run, and a record skeleton (response still empty) per request key."""
    from qr_ds.tasks import get_task

    task = get_task(cfg.task)
    sampling = sampling_params(cfg.teacher)
    requests, skeletons = [], {}
    for ex in examples:
        for style, template in cfg.style_templates().items():
            prompt = template.replace("{question}", ex.question)
            for k in range(cfg.samples_per_style):
                rid = f"{ex.id}/{style}/{k}"
                requests.append(Request(rid, prompt, derive_seed(cfg.teacher.sampling.seed, rid),
                                        context={"task": task, "example": ex, "style": style, "sample": k}))
                skeletons[rid] = PathRecord(
                    id=rid, task=ex.task, question_id=ex.id, question=ex.question, gold=ex.gold, teacher=model,
                    style=style, sample=k, prompt=prompt, error="pending", sampling=sampling, level=ex.level,
                    meta={"choices": [list(c) for c in ex.choices] if ex.choices else None, "example_meta": ex.meta},
                )
    if len(skeletons) != len(requests):
        raise ValueError(f"{cfg.data}: duplicate question ids: record ids must be unique")
    return requests, skeletons


def compact(log: Path, keys: list[Key]) -> list[PathRecord]:
    """One record per key, in ``keys`` order: the latest success, else the latest failure. The log
    (every try of every path) is streamed; only the best record per key is held."""
    best: dict[Key, PathRecord] = {}
    if log.is_file():
        for rec in iter_pool(log, log=lambda m: None):
            k = record_key(rec)
            if rec.ok or k not in best or not best[k].ok:
                best[k] = rec
    return [best[k] for k in keys if k in best]


def generate(cfg: GenerateConfig, teacher: Teacher | None = None, progress: bool = True,
             examples: list[Example] | None = None) -> GenerateStats:
    """Ask for every path not yet done, write the pool; raise TooFewSucceeded after writing it.
    ``examples``: these questions instead of ``cfg.data``'s (questions a teacher wrote, teacher/derive.py)."""
    refuse_foreign_out(cfg.out)
    examples = load_questions(cfg) if examples is None else examples  # a refused split, like a refused second run, should cost nothing
    with output_lock(cfg.out):  # before loading a model: a refused second run should cost nothing
        stats = _generate(cfg, examples, teacher or make_teacher(cfg.teacher), progress)
    check_success(stats, cfg)
    return stats


def refuse_foreign_out(out: Path) -> None:
    """ConfigError when ``out`` holds a file generate did not write. Resuming reads only the log, and the
    pool at ``out`` is rewritten from it, so the log beside ``out`` is what marks the pool as generate's."""
    if not out.is_file() or out.stat().st_size == 0:
        return
    seems = _not_generated(out)
    if seems is None:
        if log_path(out).is_file():
            return
        seems = f"a path pool without generate's request log ({log_path(out).name}) beside it"
    raise ConfigError(f"config key 'out': {out} is {seems}, not a pool generate wrote, and generating would "
                      "replace it: set another out= or move the file aside")


def _not_generated(out: Path) -> str | None:
    """What ``out`` seems to be, from its first line, when that is not a record generate writes."""
    with out.open("rb") as fh:
        first = fh.readline()
    try:
        obj = json.loads(first)
        rec = parse_record(obj) if isinstance(obj, dict) else None
    except ValueError:  # not JSON, not UTF-8, or a RecordError
        rec = None
    if rec is None:
        return "not a path pool (its first line is not a pool record)"
    if rec.embedding is not None:
        return "an embedded pool (qr-ds embed's output)"
    if rec.correct is not None or rec.answer is not None or rec.judge is not None:
        return "a filtered pool (qr-ds filter's output)"
    return None


def check_success(stats: GenerateStats, cfg: GenerateConfig) -> None:
    share = stats.succeeded / stats.planned if stats.planned else 0.0
    if stats.succeeded == 0 or share < cfg.min_success_share:
        raise TooFewSucceeded(
            f"only {stats.succeeded} of {stats.planned} planned paths have a response ({share:.0%}; "
            f"min_success_share is {cfg.min_success_share:.0%}).\n{stats.summary()}\n"
            f"pool written to {cfg.out}; fix the cause and run again: paths already done are not asked again")


def _generate(cfg: GenerateConfig, examples: list[Example], teacher: Teacher, progress: bool) -> GenerateStats:
    requests, skeletons = plan(cfg, teacher.model, examples)
    keys = [record_key(skeletons[r.key]) for r in requests]
    log = log_path(cfg.out)
    repair_tail(log)
    done = {record_key(r) for r in compact(log, keys) if r.ok}
    todo = [r for r, k in zip(requests, keys) if k not in done]
    stats = GenerateStats(planned=len(requests), skipped=len(requests) - len(todo))
    bar = tqdm(total=len(todo), unit="path", desc="generate", disable=not progress, dynamic_ncols=True)

    with JsonlAppender(log) as out:

        def on_done(req: Request, comp: Completion) -> None:
            rec = skeletons[req.key]
            if comp.error is None and not (comp.text or "").strip():  # any backend: nothing to learn from
                comp.text, comp.error = None, "empty reply"
            rec.response, rec.error = comp.text, comp.error
            rec.meta.update(tokens_in=comp.tokens_in, tokens_out=comp.tokens_out, tries=comp.tries,
                            finish_reason=comp.finish_reason)
            out.write(rec.to_json())
            stats.requests += 1
            stats.tries += comp.tries
            stats.tokens_in += comp.tokens_in
            stats.tokens_out += comp.tokens_out
            if comp.error:
                stats.failures[comp.error] += 1
            bar.update(1)
            bar.set_postfix(failed=sum(stats.failures.values()), tok_out=stats.tokens_out, refresh=False)

        try:
            teacher.run(todo, on_done)
        finally:
            bar.close()
    pool = compact(log, keys)
    write_pool(cfg.out, pool)
    stats.succeeded = sum(1 for r in pool if r.ok)
    return stats


CHARS_PER_TOKEN = 4  # English prose in the common BPE vocabularies; the plan says it is an estimate
TOKENS_PER_S = 50  # one request's output speed assumed for the time estimate (a hosted model's usual stream)


def spending_plan(cfg: GenerateConfig) -> list[str]:
    """`qr-ds generate --plan`: what a run would ask, before it asks anything. Paths already in the log
    are not counted; their measured output length, when there are some, replaces max_tokens as the
    per-path estimate."""
    from qr_ds.teacher.scripted import MODEL_NAME

    refuse_foreign_out(cfg.out)
    examples = load_questions(cfg)
    model = MODEL_NAME if cfg.teacher.backend == "scripted" else cfg.teacher.model
    requests, skeletons = plan(cfg, model, examples)
    keys = [record_key(skeletons[r.key]) for r in requests]
    log = log_path(cfg.out)
    done = [r for r in compact(log, keys) if r.ok] if log.is_file() else []
    done_keys = {record_key(r) for r in done}
    todo = [r for r, k in zip(requests, keys) if k not in done_keys]
    measured = [r.meta.get("tokens_out", 0) for r in done if r.meta.get("tokens_out")]
    per_path = sum(measured) / len(measured) if measured else cfg.teacher.sampling.max_tokens
    tokens_in = sum(len(r.prompt) for r in todo) // CHARS_PER_TOKEN
    tokens_out = int(per_path * len(todo))
    rounds = -(-len(todo) // cfg.teacher.concurrency)
    seconds = rounds * per_path / TOKENS_PER_S
    took = f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"
    basis = (f"the mean of {len(measured)} paths already generated" if measured
             else f"sampling.max_tokens, an upper bound: run with limit=20 to measure")
    lines = [
        f"plan for {cfg.out}: {len(examples)} questions x {len(cfg.style_templates())} styles x "
        f"{cfg.samples_per_style} samples = {len(requests)} paths; {len(requests) - len(todo)} already done",
        f"teacher calls: {len(todo)} ({cfg.teacher.backend}, {model or '(no model)'}); each retried up to "
        f"{cfg.teacher.max_retries} times on failure",
        f"tokens in: ~{tokens_in:,} (prompt characters / {CHARS_PER_TOKEN})",
        f"tokens out: ~{tokens_out:,} ({per_path:.0f} a path: {basis})",
        f"time: ~{took} at concurrency {cfg.teacher.concurrency}, assuming {TOKENS_PER_S} output tokens/s "
        "a request",
        "cost: tokens in x the endpoint's input price + tokens out x its output price; nothing was asked",
    ]
    if cfg.teacher.backend == "scripted":  # the estimates above are what a model would take for these calls
        lines.append("the scripted stand-in asks no endpoint: it writes these paths here in seconds, for nothing; "
                     "the estimates are a model's for the same calls")
    return lines + ([f"then `qr-ds derive`: up to {written} more calls, one to solve each written question"]
                    if (written := sum(r.context["style"] in WRITERS for r in requests)) else [])


def print_summary(stats: GenerateStats, out: Path) -> None:
    print(stats.summary(), file=sys.stderr)
    print(f"pool written to {out} (log: {log_path(out)})", file=sys.stderr)
