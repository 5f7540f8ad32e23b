"""Two-step quality filter: answer correctness, then an LLM judge's verdict on spurious steps.

Judge verdicts are appended to ``<out>.judge.jsonl`` as they arrive, keyed by a hash of the judge
(backend, model) and the full judge prompt (question, path text, template), so a re-run asks
only about paths not yet judged, and a regenerated path or a changed prompt is judged afresh. A
judge request that fails outright (HTTP errors after retries) is not cached and the path gets
no verdict: it is not kept, and the next run asks again.

The filtered pool is exactly the set to train on: correct paths judged VALID, plus UNPARSEABLE
ones only with ``keep_unparseable``. What judged is named in every output (``judged_by``).
"""
from __future__ import annotations

import hashlib
import json
import sys
from array import array
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from qr_ds.config import ConfigError
from qr_ds.data.jsonl import JsonlAppender, iter_jsonl, repair_tail
from qr_ds.data.pool import JudgeVerdict, PathRecord, PoolStream, write_pool
from qr_ds.filter.config import HOW_TO_JUDGE, FilterConfig, JudgeConfig, judge_log_path, report_paths
from qr_ds.filter.judge import judge_prompt, parse_verdict
from qr_ds.stages import StageFailed, derive_seed, output_lock
from qr_ds.teacher.backends import make_teacher
from qr_ds.teacher.base import Completion, Request, Teacher

STAND_IN = "scripted stand-in judge (not an LLM; synthetic task only)"
NO_JUDGE = "none: step 2 skipped"


def judged_by(judge: JudgeConfig) -> str:
    """What judged, as every output names it (records, judge log, retention table, stderr)."""
    if judge.backend == "none":
        return NO_JUDGE
    if judge.backend == "scripted":
        return STAND_IN
    where = f" at {judge.base_url}" if judge.backend == "openai" else ""
    return f"{judge.backend} {judge.model}{where}"


def cache_key(judge: str, prompt: str) -> str:
    """A verdict holds for one judge and one exact prompt (question, path text and template)."""
    return hashlib.sha256(f"{judge}\n{prompt}".encode()).hexdigest()


def check_unique_ids(pool: Path) -> set[str]:
    """Refuse a pool with repeated path ids: verdicts and training rows are matched by id. Returns the
    pool's task names (this pass reads every line anyway, and the judge check needs them first).

    Holds 8 bytes per id (its hash; a dict of the ids themselves took 140 MiB at 1M paths); only
    when two hashes meet does a second pass collect the lines of the ids behind them."""
    hashes, tasks = array("q"), set()
    for _, obj in _pool_objects(pool):
        if isinstance(obj.get("task"), str):
            tasks.add(obj["task"])
        if isinstance(obj.get("id"), str):
            hashes.append(_id_hash(obj["id"]))
    ordered = np.sort(np.frombuffer(hashes, np.int64))
    clashing = set(ordered[1:][ordered[1:] == ordered[:-1]].tolist())
    if not clashing:
        return tasks
    lines: dict[str, list[int]] = {}  # in the order the ids first occur
    for lineno, obj in _pool_objects(pool):
        if isinstance(obj.get("id"), str) and _id_hash(obj["id"]) in clashing:
            lines.setdefault(obj["id"], []).append(lineno)
    repeated = [(i, ls) for i, ls in lines.items() if len(ls) > 1]  # a hash clash alone is no repeat
    if repeated:
        shown = "; ".join(f"{i!r} at lines {', '.join(map(str, ls))}" for i, ls in repeated[:10])
        more = f"; and {len(repeated) - 10} more" if len(repeated) > 10 else ""
        raise ValueError(f"{pool}: {len(repeated)} path id(s) occur more than once: {shown}{more}. "
                         f"Give each path one record (pools merged from several teachers need the teacher in the id)")
    return tasks


_id_hash = hash  # 64 bits, cached on the string; clashes are resolved by the second pass


def _pool_objects(pool: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each line that parses to a JSON object; the pool stream quarantines the rest."""
    with pool.open(encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                yield lineno, obj


def check_tasks(pool: Path, tasks: set[str]) -> None:
    """Every record's task is one this version scores; refused naming the first record of an unknown
    one by file:line before any path is judged (before: the run stopped at that record, unnamed)."""
    from qr_ds.tasks import list_tasks

    unknown = tasks - {t.name for t in list_tasks()}
    if not unknown:
        return
    first = next((line, obj) for line, obj in _pool_objects(pool) if obj.get("task") in unknown)  # errors only
    more = f" ({len(unknown) - 1} more unknown task name(s) in the pool)" if len(unknown) > 1 else ""
    raise ValueError(f"{pool}:{first[0]}: record {str(first[1].get('id'))[:80]!r}: unknown task "
                     f"{first[1]['task'][:80]!r}{more}; known tasks: {', '.join(t.name for t in list_tasks())}")


def check_judge_fits(tasks: set[str], judge: JudgeConfig) -> None:
    """The scripted judge knows only the steps the scripted teacher plants: elsewhere it passes everything."""
    others = sorted(tasks - {"synthetic"})
    if judge.backend == "scripted" and others:
        raise ConfigError(f"config key 'judge.backend': the scripted stand-in judge recognises only the spurious "
                          f"steps the scripted teacher plants in the synthetic task; this pool holds task(s) "
                          f"{', '.join(others)}, where it would pass every path.\n{HOW_TO_JUDGE}")


def example_of(rec: PathRecord):
    """The task Example a record was generated from (generate keeps choices and meta in record.meta)."""
    from qr_ds.tasks import Example

    choices = rec.meta.get("choices")
    return Example(id=rec.question_id, task=rec.task, question=rec.question, gold=rec.gold,
                   choices=[tuple(c) for c in choices] if choices else None, level=rec.level,
                   meta=rec.meta.get("example_meta") or {})


def checked_answer(rec: PathRecord, text: str, partial: bool = False) -> tuple[str | None, bool]:
    """The answer ``text`` states for ``rec``'s question (the task's extractor) and whether it is right
    (its scorer): what step 1 records for the whole path, and the trainer asks of a cut path's visible
    part (``partial``: the extractor's reading of a cut text)."""
    from qr_ds.tasks import get_task

    task, ex = get_task(rec.task), example_of(rec)
    answer = task.extract(text, ex, partial=partial)
    return answer, task.is_correct(answer, ex)


def check_answers(records: Iterable[PathRecord]) -> None:
    """Step 1: fill ``answer`` and ``correct`` from the task's extractor and scorer."""
    for rec in records:
        rec.answer, rec.correct = checked_answer(rec, rec.response or "")


@dataclass
class JudgeStats:
    asked: int = 0
    cached: int = 0
    tries: int = 0
    request_failures: int = 0
    last_error: str = ""


def load_cache(log: Path) -> dict[str, dict]:
    """Cached verdicts by cache key; rows from before keys existed have none and are asked again."""
    repair_tail(log)
    if not log.is_file():
        return {}
    # verdict and reason only: the raw reply stays in the log, never in memory for every path
    return {row["key"]: {"verdict": row["verdict"], "reason": row["reason"]} for row in iter_jsonl(log) if "key" in row}


def judge_paths(records: list[PathRecord], cfg: FilterConfig, out: Path, teacher: Teacher | None = None,
                progress: bool = True, cache: dict[str, dict] | None = None,
                stats: JudgeStats | None = None) -> JudgeStats:
    """Step 2: set ``judge`` on every record, from the cache or by asking (re-asking unparseable replies).

    A record whose judge request failed is left with ``judge`` None: it has no verdict. A caller
    judging a pool chunk by chunk passes the judge, the loaded cache and the stats to add to."""
    teacher = teacher or make_teacher(cfg.judge)
    name = judged_by(cfg.judge)
    log = judge_log_path(out)
    cache = load_cache(log) if cache is None else cache
    prompts = {r.id: judge_prompt(r.question, r.response or "") for r in records}
    keys = {r.id: cache_key(name, prompts[r.id]) for r in records}
    stats = stats or JudgeStats()
    pending = []
    for rec in records:
        row = cache.get(keys[rec.id])
        if row:
            rec.judge = JudgeVerdict(row["verdict"], row["reason"], name)
            stats.cached += 1
        else:
            rec.judge = None
            pending.append(rec)
    by_id = {r.id: r for r in pending}
    stats.asked += len(pending)
    bar = tqdm(total=len(pending), desc="step 2: judge", unit="path", disable=not progress, dynamic_ncols=True)
    with bar, JsonlAppender(log) as app:
        for attempt in range(cfg.judge_retries + 1):
            unparsed: list[PathRecord] = []
            last = attempt == cfg.judge_retries

            def on_done(req: Request, comp: Completion) -> None:
                rec = by_id[req.key]
                stats.tries += 1
                if comp.error:  # transport failure: not a verdict, not cached
                    stats.request_failures += 1
                    stats.last_error = comp.error
                    bar.update(1)
                    return
                parsed = parse_verdict(comp.text)
                if parsed is None and not last:
                    unparsed.append(rec)
                    return
                verdict, reason = parsed or ("UNPARSEABLE", f"no verdict in {attempt + 1} replies; last: {(comp.text or '')[:200]!r}")
                rec.judge = JudgeVerdict(verdict, reason, name)
                app.write({"id": rec.id, "key": keys[rec.id], "model": name, "verdict": verdict, "reason": reason,
                           "raw": comp.text, "tries": attempt + 1})
                bar.update(1)

            requests = [Request(r.id, prompts[r.id], derive_seed(cfg.judge.sampling.seed, r.id, attempt),
                                context={"judge_record": r}) for r in pending]
            teacher.run(requests, on_done)
            pending = unparsed
            if not pending:
                break
    return stats


def kept_paths(correct: list[PathRecord], cfg: FilterConfig) -> list[PathRecord]:
    """What is trained on: VALID, plus UNPARSEABLE only with keep_unparseable; no verdict, never."""
    if cfg.judge.backend == "none":
        return correct
    allowed = {"VALID", "UNPARSEABLE"} if cfg.keep_unparseable else {"VALID"}
    return [r for r in correct if r.judge is not None and r.judge.verdict in allowed]


class RetentionTally:
    """Counts after each step per (task, style) and overall, path by path: the table without the pool."""

    def __init__(self, judged: bool, keep_unparseable: bool):
        self.judged, self.keep_unparseable = judged, keep_unparseable
        self.cells: dict[tuple[str, str], Counter] = defaultdict(Counter)

    def add(self, rec: PathRecord) -> None:
        for key in ((rec.task, rec.style), ("all", "all")):
            c = self.cells[key]
            c["paths"] += 1
            if rec.correct:
                c["correct"] += 1
                c[rec.judge.verdict if rec.judge else None] += 1

    def rows(self) -> list[dict]:
        rows = []
        for (task, style), c in sorted(self.cells.items(), key=lambda kv: (kv[0][0] == "all", kv[0])):
            n, correct = c["paths"], c["correct"]
            row = {"task": task, "style": style, "paths": n, "correct": correct,
                   "step1_rate": round(correct / n, 4) if n else 0.0}
            if self.judged:
                kept = c["VALID"] + (c["UNPARSEABLE"] if self.keep_unparseable else 0)
                row.update(valid=c["VALID"], invalid=c["INVALID"], unparseable=c["UNPARSEABLE"],
                           judge_failed=c[None], kept=kept, step2_rate=round(kept / correct, 4) if correct else 0.0)
            else:
                row["kept"] = correct
            row["kept_rate"] = round(row["kept"] / n, 4) if n else 0.0
            rows.append(row)
        return rows


def retention_table(all_ok: list[PathRecord], judged: bool, keep_unparseable: bool) -> list[dict]:
    """Counts and rates after each step, per (task, style) and overall."""
    tally = RetentionTally(judged, keep_unparseable)
    for r in all_ok:
        tally.add(r)
    return tally.rows()


@dataclass
class FilterResult:
    rows: list[dict]
    kept: int
    failed_generation: int
    judged_by: str
    judge: JudgeStats | None = None
    files: list[Path] = field(default_factory=list)


class FilterFailed(StageFailed):
    """Outputs were written, but too little succeeded to train on; ``result`` has the table."""

    def __init__(self, message: str, result: FilterResult):
        super().__init__(message)
        self.result = result


# Paths judged per chunk: the judge sees this many requests at once (its concurrency), and memory
# holds one chunk, not the pool.
JUDGE_CHUNK = 4096


def run_filter(cfg: FilterConfig, teacher: Teacher | None = None, progress: bool = True) -> FilterResult:
    """Both steps, the filtered pool and the retention table; FilterFailed (after writing) when too little succeeded."""
    tasks = check_unique_ids(cfg.pool)
    check_tasks(cfg.pool, tasks)
    check_judge_fits(tasks, cfg.judge)
    with output_lock(cfg.out):
        res, n_records = _filter(cfg, teacher, progress)
    problems = shortfalls(res, n_records, cfg)
    if problems:
        raise FilterFailed("; ".join(problems), res)
    return res


def _filter(cfg: FilterConfig, teacher: Teacher | None, progress: bool) -> tuple[FilterResult, int]:
    """Streams the pool: answers checked and kept paths written as they are read, judged a chunk at
    a time; returns the result and the number of records read."""
    judged = cfg.judge.backend != "none"
    stream = PoolStream(cfg.pool)
    tally = RetentionTally(judged, cfg.keep_unparseable)
    jstats = JudgeStats() if judged else None
    judge = dict(teacher=teacher or make_teacher(cfg.judge), cache=load_cache(judge_log_path(cfg.out)),
                 stats=jstats) if judged else {}
    counts = Counter()

    def judged_chunk(chunk: list[PathRecord]) -> list[PathRecord]:
        correct = [r for r in chunk if r.correct]
        if judged and correct:
            judge_paths(correct, cfg, cfg.out, progress=progress, **judge)
        for r in chunk:
            tally.add(r)
        return kept_paths(correct, cfg)

    def kept() -> Iterator[PathRecord]:
        chunk: list[PathRecord] = []
        bar = tqdm(desc="filter", unit="path", disable=not progress, dynamic_ncols=True)
        with bar:
            for _, rec in stream:
                counts["records"] += 1
                bar.update(1)
                if not rec.ok:
                    continue
                counts["ok"] += 1
                check_answers([rec])
                chunk.append(rec)
                if len(chunk) == (JUDGE_CHUNK if judged else 1):
                    yield from judged_chunk(chunk)
                    chunk = []
            yield from judged_chunk(chunk)

    n_kept = write_pool(cfg.out, kept())
    rows = tally.rows()
    name = judged_by(cfg.judge)
    md, js = report_paths(cfg.out)
    md.write_text(f"# Retention after quality filtering\n\npool: {cfg.pool}\n\njudged by: {name}\n\n{markdown(rows)}\n")
    js.write_text(json.dumps({"pool": str(cfg.pool), "judged_by": name, "rows": rows}, indent=1))
    res = FilterResult(rows, n_kept, counts["records"] - counts["ok"], name, jstats, [cfg.out, md, js])
    return res, counts["records"]


def shortfalls(res: FilterResult, n_records: int, cfg: FilterConfig) -> list[str]:
    """Why this run must not count as a success (empty when it may)."""
    need = cfg.min_success_share
    problems = []
    answered = n_records - res.failed_generation
    if answered == 0 or answered / n_records < need:
        problems.append(f"only {answered} of {n_records} pool records have a response "
                        f"(min_success_share {need:.0%}): regenerate the pool first")
    j = res.judge
    if j and j.asked and (j.asked - j.request_failures) / j.asked < need:
        problems.append(f"{j.request_failures} of {j.asked} judge requests failed ({j.last_error}); "
                        f"they are not cached, so a re-run asks only those")
    if res.kept == 0:
        problems.append("no path was kept")
    return problems


def markdown(rows: list[dict]) -> str:
    cols = list(rows[-1]) if rows else []
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(f"{r[c]:.1%}" if c.endswith("rate") else str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def print_result(res: FilterResult) -> None:
    print(markdown(res.rows), file=sys.stderr)
    print(f"judged by: {res.judged_by}", file=sys.stderr)
    if res.failed_generation:
        print(f"{res.failed_generation} records without a response (generation failures) were not considered",
              file=sys.stderr)
    if res.judge:
        j = res.judge
        print(f"judge: {j.asked} asked, {j.cached} from cache, {j.tries} replies, {j.request_failures} request failures",
              file=sys.stderr)
    print(f"kept {res.kept} paths -> {res.files[0]}; table: {res.files[1]}", file=sys.stderr)
