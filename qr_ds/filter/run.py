"""Two-step quality filter: answer correctness, then an LLM judge's verdict on spurious steps.

Judge verdicts are appended to ``<out>.judge.jsonl`` as they arrive (keyed by path id and judge
model), so a re-run asks only about paths not yet judged. A judge request that fails outright
(HTTP errors after retries) is not cached: the next run asks again.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from qr_ds.data.jsonl import JsonlAppender, iter_jsonl
from qr_ds.data.pool import JudgeVerdict, PathRecord, load_pool, write_pool
from qr_ds.filter.config import FilterConfig
from qr_ds.filter.judge import judge_prompt, parse_verdict
from qr_ds.teacher.base import Completion, Request, Teacher, derive_seed, make_teacher
from qr_ds.teacher.generate import repair_tail


def judge_log_path(out: Path) -> Path:
    return out.with_name(out.stem + ".judge.jsonl")


def report_paths(out: Path) -> tuple[Path, Path]:
    return out.with_name(out.stem + ".retention.md"), out.with_name(out.stem + ".retention.json")


def example_of(rec: PathRecord):
    """The task Example a record was generated from (generate keeps choices and meta in record.meta)."""
    from qr_ds.tasks import Example

    choices = rec.meta.get("choices")
    return Example(id=rec.question_id, task=rec.task, question=rec.question, gold=rec.gold,
                   choices=[tuple(c) for c in choices] if choices else None, level=rec.level,
                   meta=rec.meta.get("example_meta") or {})


def check_answers(records: list[PathRecord]) -> None:
    """Step 1: fill ``answer`` and ``correct`` from the task's extractor and scorer."""
    from qr_ds.tasks import get_task

    for rec in tqdm(records, desc="step 1: answers", unit="path", disable=len(records) < 1000):
        task, ex = get_task(rec.task), example_of(rec)
        rec.answer = task.extract(rec.response or "", ex)
        rec.correct = task.is_correct(rec.answer, ex)


@dataclass
class JudgeStats:
    asked: int = 0
    cached: int = 0
    tries: int = 0
    request_failures: int = 0


def judge_paths(records: list[PathRecord], cfg: FilterConfig, out: Path, teacher: Teacher | None = None,
                progress: bool = True) -> JudgeStats:
    """Step 2: set ``judge`` on every record, from the cache or by asking (re-asking unparseable replies)."""
    teacher = teacher or make_teacher(cfg.judge)
    log = judge_log_path(out)
    repair_tail(log)
    cache = {}
    if log.is_file():
        for row in iter_jsonl(log):
            if row["model"] == teacher.model:
                cache[row["id"]] = row
    stats = JudgeStats()
    pending = []
    for rec in records:
        row = cache.get(rec.id)
        if row:
            rec.judge = JudgeVerdict(row["verdict"], row["reason"], row["model"])
            stats.cached += 1
        else:
            pending.append(rec)
    by_id = {r.id: r for r in pending}
    bar = tqdm(total=len(pending), desc="step 2: judge", unit="path", disable=not progress, dynamic_ncols=True)
    with JsonlAppender(log) as app:
        for attempt in range(cfg.judge_retries + 1):
            unparsed: list[PathRecord] = []
            last = attempt == cfg.judge_retries

            def on_done(req: Request, comp: Completion) -> None:
                rec = by_id[req.key]
                stats.tries += 1
                if comp.error:  # transport failure: not a verdict, not cached
                    stats.request_failures += 1
                    rec.judge = JudgeVerdict("UNPARSEABLE", f"judge request failed: {comp.error}", teacher.model)
                    bar.update(1)
                    return
                parsed = parse_verdict(comp.text)
                if parsed is None and not last:
                    unparsed.append(rec)
                    return
                verdict, reason = parsed or ("UNPARSEABLE", f"no verdict in {attempt + 1} replies; last: {(comp.text or '')[:200]!r}")
                rec.judge = JudgeVerdict(verdict, reason, teacher.model)
                app.write({"id": rec.id, "model": teacher.model, "verdict": verdict, "reason": reason,
                           "raw": comp.text, "tries": attempt + 1})
                bar.update(1)

            requests = [Request(r.id, judge_prompt(r.question, r.response or ""), derive_seed(cfg.judge.sampling.seed, r.id, attempt),
                                context={"judge_record": r}) for r in pending]
            stats.asked += len(requests) if attempt == 0 else 0
            teacher.run(requests, on_done)
            pending = unparsed
            if not pending:
                break
    bar.close()
    return stats


def retention_table(all_ok: list[PathRecord], judged: bool, keep_unparseable: bool) -> list[dict]:
    """Counts and rates after each step, per (task, style) and overall."""
    groups: dict[tuple[str, str], list[PathRecord]] = defaultdict(list)
    for r in all_ok:
        groups[(r.task, r.style)].append(r)
        groups[("all", "all")].append(r)
    rows = []
    for (task, style), recs in sorted(groups.items(), key=lambda kv: (kv[0][0] == "all", kv[0])):
        n = len(recs)
        correct = [r for r in recs if r.correct]
        row = {"task": task, "style": style, "paths": n, "correct": len(correct),
               "step1_rate": round(len(correct) / n, 4) if n else 0.0}
        if judged:
            count = lambda v: sum(1 for r in correct if r.judge and r.judge.verdict == v)
            kept = count("VALID") + (count("UNPARSEABLE") if keep_unparseable else 0)
            row.update(valid=count("VALID"), invalid=count("INVALID"), unparseable=count("UNPARSEABLE"),
                       kept=kept, step2_rate=round(kept / len(correct), 4) if correct else 0.0)
        else:
            row["kept"] = len(correct)
        row["kept_rate"] = round(row["kept"] / n, 4) if n else 0.0
        rows.append(row)
    return rows


@dataclass
class FilterResult:
    rows: list[dict]
    kept: int
    failed_generation: int
    judge: JudgeStats | None = None
    files: list[Path] = field(default_factory=list)


def run_filter(cfg: FilterConfig, teacher: Teacher | None = None, progress: bool = True) -> FilterResult:
    records = load_pool(cfg.pool).records
    ok = [r for r in records if r.ok]
    check_answers(ok)
    correct = [r for r in ok if r.correct]
    jstats = None
    if cfg.use_judge:
        jstats = judge_paths(correct, cfg, cfg.out, teacher, progress)
        allowed = {"VALID", "UNPARSEABLE"} if cfg.keep_unparseable else {"VALID"}
        kept = [r for r in correct if r.judge.verdict in allowed]
    else:
        kept = correct
    write_pool(cfg.out, kept)
    rows = retention_table(ok, cfg.use_judge, cfg.keep_unparseable)
    md, js = report_paths(cfg.out)
    md.write_text(f"# Retention after quality filtering\n\npool: {cfg.pool}\n\n{markdown(rows)}\n")
    js.write_text(json.dumps({"pool": str(cfg.pool), "judge": cfg.use_judge, "rows": rows}, indent=1))
    return FilterResult(rows, len(kept), len(records) - len(ok), jstats, [cfg.out, md, js])


def markdown(rows: list[dict]) -> str:
    cols = list(rows[-1]) if rows else []
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(f"{r[c]:.1%}" if c.endswith("rate") else str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def print_result(res: FilterResult) -> None:
    print(markdown(res.rows), file=sys.stderr)
    if res.failed_generation:
        print(f"{res.failed_generation} records without a response (generation failures) were not considered",
              file=sys.stderr)
    if res.judge:
        j = res.judge
        print(f"judge: {j.asked} asked, {j.cached} from cache, {j.tries} replies, {j.request_failures} request failures",
              file=sys.stderr)
    print(f"kept {res.kept} paths -> {res.files[0]}; table: {res.files[1]}", file=sys.stderr)
