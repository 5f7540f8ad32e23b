"""What a report reads from one training run folder: its config, metrics, evaluation-during-training
curve, and how its final router splits the pool it trained on."""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from qr_ds.data.pool import PoolStream
from qr_ds.run_layout import RunDir


@dataclass
class Run:
    label: str
    path: Path
    config: dict  # config.yaml as the trainer wrote it
    rows: list[dict]  # metrics.jsonl, one row per logged optimizer step
    eval_curve: list[dict]  # eval.jsonl rows with an accuracy: background evaluations during training
    failed_evals: list[dict]  # eval.jsonl rows without one (the evaluation failed)
    unreadable: list[str] = field(default_factory=list)  # file:line of each quarantined log line

    @property
    def seed(self) -> int:
        return self.config.get("seed", 0)  # TrainConfig's default

    @property
    def students(self) -> list[str]:
        return [k.split("/", 1)[1] for k in self.rows[0] if k.startswith("sft_loss/")]


def metrics_row(obj: dict) -> dict:
    """A metrics.jsonl row: every figure places it by its optimizer step."""
    from qr_ds.data.jsonl import RecordError

    if not isinstance(obj.get("step"), int) or isinstance(obj["step"], bool):
        raise RecordError("step", f"expected the optimizer step (an integer), got {obj.get('step')!r}")
    return obj


def read_jsonl(path: Path, skipped: list[str] | None = None, parse: Callable[[dict], dict] = dict) -> list[dict]:
    """Every row that parses; a line that does not (the half-written last line of a killed run) goes
    to ``<file>.quarantine.jsonl`` and is named by file:line in ``skipped`` (or on stderr)."""
    from qr_ds.data.jsonl import load_jsonl

    said = skipped if skipped is not None else []
    loaded = load_jsonl(path, parse, log=lambda m: None)
    said += [f"{path}:{line}: {reason} (quarantined to {loaded.quarantine})" for line, reason in loaded.rejected]
    if skipped is None and loaded.rejected:
        print("\n".join(said), file=sys.stderr)
    return loaded.records


def load_run(label: str, path: Path) -> Run:
    layout = RunDir(path)
    if not layout.metrics.is_file():
        raise FileNotFoundError(f"run {path}: no metrics.jsonl (was it trained, with this output_dir?)")
    if not layout.config.is_file():
        raise FileNotFoundError(f"run {path}: no config.yaml (the trainer writes it; its seed names the run)")
    unreadable: list[str] = []
    rows = read_jsonl(layout.metrics, unreadable, metrics_row)
    if not rows:
        why = f"no readable row ({unreadable[0]})" if unreadable else "empty; the run logged no optimizer step"
        raise ValueError(f"{layout.metrics}: {why}")
    evals = read_jsonl(layout.eval_log, unreadable) if layout.eval_log.is_file() else []
    scored = [e for e in evals if isinstance(e.get("accuracy"), dict) and e["accuracy"]
              and all("/" in k and isinstance(v, (int, float)) for k, v in e["accuracy"].items())]
    return Run(label, path, yaml.safe_load(layout.config.read_text()), rows, scored,
               [e for e in evals if not any(e is s for s in scored)], unreadable)


def final_routing(run: Path) -> dict | None:
    """P(student gets path) from the final router, noise-free, for every path the run trained on
    (its config's pool after its own selection), with each path's style and level. None when the
    run's router is off or fixed (``router.fixed``, ``router.withhold``: the config is the assignment, nothing was learned); an error naming the file when it was on and cannot be scored (no router.pt,
    a file that is not a weights-only state, embeddings that cannot be read or are not finite).

    The pool is streamed: records are routed a batch at a time as they are read and only a few
    fields of each are kept, so the selection the trainer makes runs over those (see ``_Routed``)."""
    import torch

    from qr_ds.config import load_config
    from qr_ds.routing.policy import router_probabilities, saved_router
    from qr_ds.train.checkpoint import load_state
    from qr_ds.train.config import TrainConfig
    from qr_ds.train.encoding import select_paths

    layout = RunDir(run)
    cfg = load_config(TrainConfig, layout.config)
    if not cfg.router.enabled or cfg.router.assigned:
        return None
    state = layout.require_latest().component("router")
    if not state.is_file():
        raise FileNotFoundError(f"{state}: not found, though {layout.config} has router.enabled: the final "
                                "checkpoint is incomplete or was copied without it")
    saved = load_state(state)
    if not isinstance(saved, dict) or "router" not in saved:
        raise ValueError(f"{state}: not a router policy's state (no 'router' entry)")
    kept = _kept_from(layout, [s.name for s in cfg.students]) if cfg.data.drop_cut_wrong else {}
    kept_bits = kept or {}  # None: a run older than the list, reported as such below
    router = None
    routed: list[_Routed] = []
    batches: list[np.ndarray] = []  # probabilities of each routed batch; a record keeps its row in them
    batch: list[tuple[int, object]] = []

    def route(batch: list[tuple[int, object]]) -> None:
        nonlocal router
        emb, at, errors = _embeddings(cfg.data.pool, batch)
        if router is None and len(emb):
            router = saved_router(cfg.router, saved, emb.shape[1], len(cfg.students))
        offset = sum(map(len, batches))
        if len(emb):
            batches.append(router_probabilities(router, torch.from_numpy(emb)).numpy())
        for k, (_, rec) in enumerate(batch):
            routed.append(_Routed(rec, offset + at[k] if at[k] is not None else None, errors.get(k),
                                  kept_bits.get(rec.id, 0)))

    for lineno, rec in PoolStream(cfg.data.pool):
        if rec.ok:  # select_paths's first rule; what else it drops, it drops from the slim records
            batch.append((lineno, rec))
            if len(batch) == ROUTE_BATCH:
                route(batch)
                batch = []
    if batch:
        route(batch)
    chosen = select_paths(cfg, routed)
    failed = next((r.error for r in chosen if r.error is not None), None)
    if failed is not None:  # the first selected path without a usable vector, as gather_embeddings says it
        raise failed
    probabilities = (np.concatenate(batches)[[r.row for r in chosen]] if chosen
                     else np.zeros((0, len(cfg.students)), np.float32))
    # a pair the answer check keeps from training is never trained on, whatever the router says
    bits = np.fromiter((r.kept_out for r in chosen), np.int64, len(chosen))
    kept_out = ((bits[:, None] >> np.arange(len(cfg.students))) & 1).astype(bool)
    probabilities[kept_out] = 0  # a copy already (fancy indexing), so no second [N, S] array
    return {"checkpoint": state.parent.name, "pool": str(cfg.data.pool), "students": [s.name for s in cfg.students],
            "probabilities": probabilities, "styles": [r.style for r in chosen],
            "levels": [r.level for r in chosen],
            "kept_out": None if kept is None else dict(zip((s.name for s in cfg.students),
                                                           kept_out.sum(axis=0).tolist()))}


# Paths routed per batch: a memory bound (the router scores each path on its own, so batching
# changes nothing but the float summation order). A batch holds whole records (text and all) while
# the slim ones it leaves behind pile up between them: at 4096 the heap's high-water mark drifted
# 15-28 MB from 4.2k to 42k paths, run to run; at 1024 it grew 6-16 MB (three runs each, the
# memory test's method; this 2-core VM).
ROUTE_BATCH = 1024


class _Routed:
    """What the report keeps of one record: what select_paths reads, its style and level, and its
    row of routing probabilities (or the error that kept it from having any). Strings shared by many
    records are interned, so a million of these hold no pool text."""

    __slots__ = ("ok", "correct", "judge", "question_id", "style", "level", "train_task", "meta", "row", "error",
                 "kept_out")

    def __init__(self, rec, row, error, kept_out: int = 0):
        self.ok, self.correct = rec.ok, rec.correct
        self.judge = _VERDICTS.setdefault(rec.judge.verdict, rec.judge) if rec.judge else None
        self.question_id, self.style = sys.intern(rec.question_id), sys.intern(rec.style)
        self.level = sys.intern(rec.level) if rec.level is not None else None
        self.train_task = rec.train_task
        source = (rec.meta.get("example_meta") or {}).get("source_id")  # question_fraction picks by it
        self.meta = {"example_meta": {"source_id": sys.intern(source)}} if source else _NO_META
        self.row, self.error = row, error
        self.kept_out = kept_out  # bit s: data.drop_cut_wrong keeps this path from student s


_NO_META: dict = {}  # never written: most records share it


_VERDICTS: dict[str, object] = {}  # select_paths reads only .verdict: one object per verdict suffices


def _kept_from(layout: RunDir, students: list[str]) -> dict[str, int] | None:
    """Pool id -> bit mask of the students the answer check keeps that path from (the trainer's
    RUN/kept_from_students.jsonl); None for a run that predates the file."""
    if not layout.kept_from.is_file():
        return None
    bit = {name: 1 << s for s, name in enumerate(students)}
    kept: dict[str, int] = {}
    with open(layout.kept_from, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict) or row.get("student") not in bit or not isinstance(row.get("path"), str):
                raise ValueError(f"{layout.kept_from}:{lineno}: not a row {{'student': one of {students}, "
                                 f"'path': a pool id}}: {line.strip()[:80]!r}")
            kept[row["path"]] = kept.get(row["path"], 0) | bit[row["student"]]
    return kept


def _embeddings(pool: Path, batch: list[tuple[int, object]]) -> tuple[np.ndarray, list[int | None], dict]:
    """The vectors of a batch's records, stacked; each record's row in them (None for a record without
    a usable vector); and the EmbeddingError of each such record, kept, not raised: the record may
    not be selected."""
    from qr_ds.embed.lookup import EmbeddingError, gather_embeddings

    lines = {rec.id: lineno for lineno, rec in batch}
    recs = [rec for _, rec in batch]
    try:
        return gather_embeddings(pool, recs, lines), list(range(len(recs))), {}
    except EmbeddingError:
        pass
    rows, at, errors = [], [], {}
    for k, rec in enumerate(recs):  # record by record, only for a batch that holds a bad one
        try:
            rows.append(gather_embeddings(pool, [rec], lines)[0])
            at.append(len(rows) - 1)
        except EmbeddingError as e:
            at.append(None)
            errors[k] = e
    return (np.stack(rows) if rows else np.zeros((0, 0), np.float32)), at, errors


def routing_cells(routing: dict, key: str) -> dict[str, dict[str, dict]]:
    """Mean routing probability and path count per student x value of ``key`` ("styles" or "levels")."""
    import torch

    from qr_ds.routing.rates import RoutingTally

    probs, values = routing["probabilities"], routing[key]
    known = [i for i, v in enumerate(values) if v is not None]
    tally = RoutingTally(routing["students"])
    tally.update(torch.as_tensor(probs[known]), [str(values[i]) for i in known])
    return {name: {v: {"mean_probability": routed / seen, "paths": seen} for v, (routed, seen) in cells.items()}
            for name, cells in tally.per_student().items()}


def binned_style_loss(rows: list[dict], student: str, bins: int = 10) -> dict[str, list[tuple[float, float]]]:
    """Per style: (mean step, nats per character) over ``bins`` equal step ranges; per-step counts
    are a handful of paths, so each point pools the steps of one range (and the rows of every seed
    of a method, when given them all)."""
    key = f"style_nats_per_char/{student}"
    width = max(1, -(-max(r["step"] for r in rows) // bins))
    steps: dict[int, list[int]] = defaultdict(list)
    sums: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0]))
    for r in rows:
        b = (r["step"] - 1) // width
        steps[b].append(r["step"])
        for style, (total, count) in (r.get(key) or {}).items():
            sums[b][style][0] += total
            sums[b][style][1] += count
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for b in sorted(steps):
        for style, (total, count) in sums[b].items():
            if count:
                out[style].append((float(np.mean(steps[b])), total / count))
    return dict(sorted(out.items()))


def throughput(rows: list[dict]) -> dict:
    names = [k.split("/", 1)[1] for k in rows[0] if k.startswith("sft_loss/")]
    tail = rows[1:] or rows  # the first step pays engine warm-up
    step_s = sum(r["step_s"] for r in tail) / len(tail)
    exch = sum(r["exchange_s"] for r in tail) / len(tail)
    return {"step_s": step_s, "tokens_per_s": sum(r["tokens_per_s"] for r in tail) / len(tail),
            "exchange_share": exch / step_s if step_s else 0.0,
            "peak_mem_GiB": max(r["peak_mem_GiB"] for r in rows),
            **{f"tokens_per_s/{n}": sum(r[f"tokens_per_s/{n}"] for r in tail) / len(tail) for n in names}}
