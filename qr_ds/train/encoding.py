"""Paths to token ids: the selection rules, one tokenizer call per chunk and student, and the
alignment of every student's tokens on character spans of the path text that all of them share."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from qr_ds.data.format import EncodedExample, encode_sft_batch, render_prompt
from qr_ds.data.pool import PathRecord
from qr_ds.mutual.spans import common_spans, group_spans, token_span_ids
from qr_ds.train.config import TrainConfig


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # -100 on prompt tokens: the SFT loss covers the response only
    span_ids: list[int]  # -1 outside every shared span
    truncated: bool = False  # cut at the student's max_len: the end of the path is not trained on
    unseen_chars: int = 0  # characters of the path past the cut


def select_paths(cfg: TrainConfig, records: list[PathRecord]) -> list[PathRecord]:
    recs = [r for r in records if r.ok]
    if cfg.data.quality_filter:
        if recs and all(r.correct is None for r in recs):
            raise ValueError(f"{cfg.data.pool}: no record has 'correct' set: run `qr-ds filter` first, "
                             "or set data.quality_filter: false to train on unfiltered paths")
        # The filter decides what an UNPARSEABLE verdict means (keep_unparseable) and writes only
        # what it keeps; here only what it rejected outright is dropped, so both agree.
        recs = [r for r in recs if r.correct and (r.judge is None or r.judge.verdict != "INVALID")]
    if cfg.data.paths_per_question:
        by_q: dict[str, list[PathRecord]] = defaultdict(list)
        for r in recs:
            by_q[r.question_id].append(r)
        recs = [r for q in by_q.values() for r in q[: cfg.data.paths_per_question]]
    if cfg.data.limit:
        recs = recs[: cfg.data.limit]
    if not recs:
        raise ValueError(f"{cfg.data.pool}: no paths left to train on after selection "
                         f"(quality_filter={cfg.data.quality_filter}, paths_per_question={cfg.data.paths_per_question})")
    return recs


def instruction_for(task: str) -> str:
    from qr_ds.tasks import get_task

    return get_task(task).instruction


def iter_encoded(recs: Sequence[PathRecord], tokenizers: list, lens: Sequence[int], max_spans: int,
                 chunk: int = 1024) -> Iterator[tuple[list[Encoded], int]]:
    """Per path, in order: each student's ``Encoded`` and the number of shared spans. Tokenizes
    ``chunk`` paths per batched call, so memory holds one chunk, never the pool."""
    instructions: dict[str, str] = {}
    for lo in range(0, len(recs), chunk):
        part = recs[lo: lo + chunk]
        for r in part:
            if r.task not in instructions:
                instructions[r.task] = instruction_for(r.task)
        prompts = [[render_prompt(tok, r.question, instructions[r.task]) for r in part] for tok in tokenizers]
        batches = [encode_sft_batch(tok, p, [r.response for r in part]) for tok, p in zip(tokenizers, prompts)]
        for j, rec in enumerate(part):
            yield _align(rec, [b[j] for b in batches], lens, max_spans)


def _align(rec: PathRecord, encs: list[EncodedExample], lens: Sequence[int], max_spans: int) -> tuple[list[Encoded], int]:
    cut_encs, rel_offsets, ends = [], [], []
    for e, n in zip(encs, lens):
        ids_all, offs_all, rstart = e.input_ids, e.offsets, e.response_start
        ids, offs = ids_all[:n], offs_all[:n]
        # Offsets relative to the response: prompts differ per student, the path text does not.
        rel = [(a - rstart, b - rstart) if b > a else (0, 0) for a, b in offs]
        cut_encs.append((ids, offs, rstart, len(ids_all) > n))
        rel_offsets.append(rel)
        ends.append(max([b for a, b in rel if b > a] + [0]))
    end = min(min(ends), len(rec.response))  # spans only where every student kept the text
    spans = group_spans(common_spans(rel_offsets, 0, end), max_spans)
    out = []
    for s, (ids, offs, rstart, cut) in enumerate(cut_encs):
        # The response and the EOS after it (an added token keeps its offsets in the text).
        labels = [t if a >= rstart and b > a else -100 for t, (a, b) in zip(ids, offs)]
        unseen = len(rec.response) - min(ends[s], len(rec.response)) if cut else 0
        out.append(Encoded(ids, labels, token_span_ids(rel_offsets[s], spans), cut, unseen))
    return out, len(spans)


def student_lens(max_len: int | Sequence[int], n_students: int) -> list[int]:
    lens = [max_len] * n_students if isinstance(max_len, int) else list(max_len)
    if len(lens) != n_students:
        raise ValueError(f"encode_all: {len(lens)} max_len values for {n_students} tokenizers")
    return lens


def encode_all(recs: list[PathRecord], tokenizers: list, max_len: int | Sequence[int], max_spans: int,
               progress: Callable = lambda it, **kw: it) -> tuple[list[list[Encoded]], list[int]]:
    """Per student, per path: ids, labels and span ids over spans shared by all tokenizers.
    ``max_len`` is one context length for every student or one per student."""
    lens = student_lens(max_len, len(tokenizers))
    per_student: list[list[Encoded]] = [[] for _ in tokenizers]
    n_spans: list[int] = []
    for encs, n in progress(iter_encoded(recs, tokenizers, lens, max_spans), total=len(recs),
                            desc="tokenize+align", unit="path"):
        for s, e in enumerate(encs):
            per_student[s].append(e)
        n_spans.append(n)
    return per_student, n_spans
