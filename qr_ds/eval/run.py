"""Evaluate checkpoints: generate for every (student adapter | base model) x task example, score,
ensemble, and write predictions.jsonl, summary.json and summary.md."""
from __future__ import annotations

import dataclasses

import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable

from qr_ds.config import ConfigError
from qr_ds.data.format import encode_prompt, render_prompt
from qr_ds.data.jsonl import write_jsonl
from qr_ds.data.pool import normalise_question, pool_questions
from qr_ds.eval.checkpoints import Adapter, checkpoints_of_run, read_checkpoint
from qr_ds.eval.config import EvalConfig
from qr_ds.eval.backends import make_backend
from qr_ds.eval.generation import FullRef, Request, new_lora, stop_ids
from qr_ds.eval.scoring import ENSEMBLES, ensemble, markdown, summarize, teacher_rows
from qr_ds.run_layout import CheckpointDir, RunDir
from qr_ds.stages import held_inputs, output_lock, set_aside
from qr_ds.tasks import Example, get_task
from qr_ds.tasks.base import is_file_source


def load_tasks(tasks: dict[str, str], limit: int, split: str | None = None) -> dict[str, list[Example]]:
    """Each task's examples: a data file, or a hub dataset (``name[:config]``) at ``split``
    (default: the task's evaluation split, ``test`` for most)."""
    out = {}
    for name, source in tasks.items():
        task = get_task(name)  # ValueError naming the unknown task and the known ones
        if is_file_source(Path(source)):
            if not Path(source).is_file():
                raise FileNotFoundError(f"data file for task '{name}' not found: {source}")
            out[name] = task.load(str(source), limit=limit or None)
        else:
            out[name] = task.load(str(source), split=split, limit=limit or None)
    return out


def training_pools(cfg: EvalConfig) -> list[Path]:
    """The pools the evaluated students trained on: data.pool in the config.yaml of the run, and of
    the run each checkpoint lies in (RUN/checkpoints/step_N)."""
    runs = [CheckpointDir(Path(c)).run for c in cfg.checkpoints]
    runs += [RunDir(cfg.run_dir)] if cfg.run_dir is not None else []
    return sorted({p for p in (run.training_pool() for run in runs) if p is not None})


def warn_overlap(pools: list[Path], examples: dict[str, list[Example]], tasks: dict[str, str],
                 log: Callable[[str], None]) -> None:
    """Scores on questions a student trained on measure memory: say so, with how many."""
    for pool in pools:
        trained = pool_questions(pool)
        for name, exs in examples.items():
            shared = sum(normalise_question(ex.question) in trained for ex in exs)
            if shared:
                log(f"eval: warning: {shared} of {len(exs)} questions of {name} ({tasks[name]}) are also in the "
                    f"training pool {pool}: the students saw them in training, so their scores overstate accuracy")


def teacher_split(pool: Path, examples: dict[str, list[Example]]) -> tuple[list[dict], list[dict]]:
    """The teacher's paths on the questions scored here (rows beside the students'), and the summary
    of those on the pool's other questions: the training questions, correct by construction once
    filtered, so never a row beside the test scores. One pass over the pool; only the test
    questions' rows are held (the pool may hold a million paths)."""
    test = {(t, normalise_question(ex.question)) for t, exs in examples.items() for ex in exs}
    on_test: list[dict] = []

    def others():
        for row in teacher_rows(pool, list(examples)):
            if (row["task"], normalise_question(row["question"])) in test:
                on_test.append(row)
            else:
                yield row

    pool_only = summarize(others(), list(examples))
    return on_test, pool_only


def coincide(rows: list[dict]) -> dict[str, int] | None:
    """With two students the vote ensemble ties on every disagreement and takes the likelier answer,
    as the log-prob rule does: the two differ only where the likelier student gave no answer. How
    many questions that was (None with more than two students, where the rules really differ)."""
    picks: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        if r["student"] in ENSEMBLES:
            picks[(r["checkpoint"], r["task"], r["id"])][r["student"]] = r
    members = Counter((r["checkpoint"], r["task"], r["id"]) for r in rows
                      if r["checkpoint"] != "zero-shot" and "from_student" not in r)
    if not picks or any(members[k] != 2 for k in picks):
        return None
    return {"questions": len(picks), "differ": sum(p[ENSEMBLES[0]]["extracted"] != p[ENSEMBLES[1]]["extracted"]
                                                  for p in picks.values())}


def table_notes(pool: Path | None, pool_only: list[dict], ensembles: dict[str, int] | None) -> list[str]:
    notes = []
    if ensembles is not None:
        notes.append(f"With two students the vote and log-prob ensembles can differ only where the likelier "
                     f"student gave no answer: they differ on {ensembles['differ']} of {ensembles['questions']} "
                     f"(checkpoint, question) pairs here.")
    for row in pool_only:
        cells = ", ".join(f"{t} {100 * c['accuracy']:.1f}% of {c['n']} paths" for t, c in row["tasks"].items())
        notes.append(f"Not a test score: the teacher ({row['student']}) has no path on these test questions; "
                     f"its paths in the training pool `{pool}` are right in {cells} (a filtered pool is right "
                     f"by construction).")
    return notes


def with_unique_labels(adapters: list[Adapter]) -> list[Adapter]:
    """The same step of several runs: rows are named "run/step_N", with as many of the run folder's
    trailing parts as tell the runs apart ("qr_distill/s0/step_N" beside "no_route/s0/step_N")."""
    runs = [CheckpointDir.of_weights(a.path).run.root for a in adapters]

    def labels(depth: int) -> list[tuple[str, str]]:
        return [("/".join(run.parts[-depth:] + (a.checkpoint,)) if depth else a.checkpoint, a.student)
                for a, run in zip(adapters, runs)]

    depth = 0
    while len(set(labels(depth))) < len(adapters) and depth < max(len(run.parts) for run in runs):
        depth += 1
    return [dataclasses.replace(a, checkpoint=label) for a, (label, _) in zip(adapters, labels(depth))]


def collect_adapters(cfg: EvalConfig) -> list[Adapter]:
    ckpts = list(cfg.checkpoints)
    if cfg.run_dir is not None:
        ckpts += checkpoints_of_run(cfg.run_dir, cfg.which)
    adapters = [a for c in ckpts for a in read_checkpoint(c)]
    adapters = with_unique_labels(adapters)
    if cfg.max_lora_rank:
        for a in adapters:
            if a.rank > cfg.max_lora_rank:
                raise ValueError(f"adapter {a.path} (student '{a.student}') has LoRA rank {a.rank}, above the "
                                 f"engine's max_lora_rank {cfg.max_lora_rank}; raise max_lora_rank or set it to 0")
    return adapters


def held_evaluation(out: Path) -> str | None:
    """What an earlier evaluation left in ``out``, in words (from its summary.json when readable);
    None when it holds none."""
    if not any((out / name).is_file() for name in ("predictions.jsonl", "summary.json")):
        return None
    try:
        summary = json.loads((out / "summary.json").read_text())
        if not isinstance(summary, dict):
            raise ValueError("not an object")
        # summaries written before "checkpoints" was recorded name them by their row labels only
        ckpts = summary.get("checkpoints") or sorted({r["checkpoint"] for r in summary["rows"]}
                                                     - {"zero-shot", "teacher"})
        more = f" and {len(ckpts) - 3} more" if len(ckpts) > 3 else ""
        return f"an evaluation of {', '.join(ckpts[:3])}{more} on {', '.join(summary['tasks'])}"
    except (OSError, ValueError, KeyError, TypeError):
        return "the predictions.jsonl of an evaluation (no readable summary.json)"


def claim_out(out: Path, overwrite: bool, inputs: dict[str, Path | str | None], named: str = "config key 'out'") -> None:
    """Results already in ``out`` may be hours of GPU work: refuse before anything loads, or with
    ``overwrite`` move them aside (never delete them), unless that would move an input with them.
    ``named``: how the user set ``out`` (the --out flag, or the key in a config file)."""
    held = held_evaluation(out)
    if held is None:
        return
    if not overwrite:
        raise ConfigError(f"{named}: {out} already holds {held}; pass another --out, or --overwrite "
                          "to move it aside and evaluate again")
    if taken := held_inputs(out, inputs):
        raise ConfigError(f"{named}: --overwrite would move {out} aside and with it {', '.join(taken)}: "
                          "give --out a folder of its own")
    set_aside(out, "eval", "evaluation")


def evaluate(cfg: EvalConfig, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
             overwrite: bool = False, out_named: str = "config key 'out'") -> dict:
    """Refused when ``cfg.out`` holds an earlier evaluation (``overwrite``: moved aside first) or another
    evaluation is writing it; ``out_named`` says how the user set ``cfg.out``."""
    t0 = time.perf_counter()
    examples = load_tasks(cfg.tasks, cfg.limit, cfg.split)
    adapters = collect_adapters(cfg)
    out = Path(cfg.out).resolve()  # "." or ".." has no name to put a lock or an aside beside
    inputs = {"the run": cfg.run_dir, "the teacher pool": cfg.teacher_pool,
              **{f"checkpoint {a.checkpoint} of {a.student}": a.path for a in adapters},
              **{f"the {task} data": source for task, source in cfg.tasks.items()}}
    # Held until the results are written: two evaluations started side by side into one folder would
    # both find it empty, and the later to finish would replace the other's.
    with output_lock(out):
        claim_out(out, overwrite, inputs, out_named)  # before any model loads: a refused run costs nothing
        warn_overlap(training_pools(cfg), examples, cfg.tasks, log)
        return score(cfg, examples, adapters, t0, log)


def score(cfg: EvalConfig, examples: dict[str, list[Example]], adapters: list[Adapter], t0: float,
          log: Callable[[str], None]) -> dict:
    """Generate for every adapter and base model, score, and write the results into ``cfg.out``."""
    from transformers import AutoTokenizer

    backend = make_backend(cfg.backend, dtype=cfg.dtype, max_model_len=cfg.max_model_len,
                           gpu_memory_utilization=cfg.gpu_memory_utilization, batch_size=cfg.batch_size,
                           max_loras=cfg.max_loras)
    bases: dict[tuple[str, str], list[Adapter]] = defaultdict(list)  # one engine per base model
    for a in adapters:
        bases[(a.model, a.tokenizer)].append(a)
    rows, served = [], []
    for (model, tok_name), group in bases.items():
        tok = AutoTokenizer.from_pretrained(tok_name)
        prompts = {(t, ex.id): render_prompt(tok, ex.question, get_task(t).instruction)
                   for t, exs in examples.items() for ex in exs}
        ids = {k: encode_prompt(tok, p) for k, p in prompts.items()}
        # (checkpoint, student, Request weights): zero-shot once per base, then every adapter or full model
        jobs = [("zero-shot", "+".join(sorted({a.student for a in group})), {})] if cfg.zero_shot else []
        for a in group:
            if a.full:  # whole weights, swapped into this base model's engine
                weights = {"full": FullRef(f"{a.checkpoint}/{a.student}", a.path)}
                served.append({"model": model, "checkpoint": a.checkpoint, "student": a.student,
                               "full": True, "path": str(a.path)})
            else:
                weights = {"lora": new_lora(f"{a.checkpoint}/{a.student}", a.path)}
                served.append({"model": model, "checkpoint": a.checkpoint, "student": a.student,
                               "lora_id": weights["lora"].lora_id, "path": str(a.path), "rank": a.rank})
            jobs.append((a.checkpoint, a.student, weights))
        reqs, keys = [], []
        for ckpt, student, weights in jobs:
            for t, exs in examples.items():
                for ex in exs:
                    reqs.append(Request(ids[(t, ex.id)], **weights))
                    keys.append((ckpt, student, t, ex))
        log(f"eval: {model}: {len(reqs)} prompts ({len(jobs)} models x {sum(map(len, examples.values()))} "
            f"examples) on {backend.name}")
        gens = backend.generate(model, tok_name, reqs, stop_ids(tok, model), cfg.max_new_tokens,
                                max(cfg.max_lora_rank, max(a.rank for a in group)))
        for (ckpt, student, t, ex), g in zip(keys, gens):
            task = get_task(t)
            text = tok.decode(g.token_ids, skip_special_tokens=True)
            pred = task.extract(text, ex)
            rows.append({"checkpoint": ckpt, "student": student, "task": t, "id": ex.id,
                         "prompt": prompts[(t, ex.id)], "output": text, "extracted": pred, "gold": ex.gold,
                         "correct": task.is_correct(pred, ex), "logprob": g.logprob, "tokens": len(g.token_ids)})
    rows += ensemble([r for r in rows if r["checkpoint"] != "zero-shot"])
    pool = cfg.teacher_pool or (RunDir(cfg.run_dir).training_pool() if cfg.run_dir is not None else None)
    teacher, pool_only = teacher_split(pool, examples) if pool else ([], [])
    tasks = list(cfg.tasks)
    table = summarize(teacher + rows, tasks)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "predictions.jsonl", rows)
    (out / "adapters.json").write_text(json.dumps(served, indent=1))
    ensembles = coincide(rows)
    notes = table_notes(pool, pool_only, ensembles)
    checkpoints = sorted({str(CheckpointDir.of_weights(a.path).path) for a in adapters})
    summary = {"tasks": tasks, "checkpoints": checkpoints, "backend": backend.name,
               "teacher_pool": str(pool) if pool else None, "seconds": round(time.perf_counter() - t0, 2),
               "rows": table, "teacher_pool_rows": pool_only, "ensembles_coincide": ensembles, "notes": notes}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    md = "\n\n".join([markdown(table, tasks), *notes])
    (out / "summary.md").write_text(md + "\n")
    log(md)
    return summary
