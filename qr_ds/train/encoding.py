"""Paths to token ids: the selection rules (streamed), one tokenizer call per chunk and student, and
the alignment of every student's tokens on character spans of the path text that all of them share."""
from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from dataclasses import dataclass
from itertools import islice
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from qr_ds.data.baselines import MAIN, OBJECTIVES, TARGETS, TRAIN_TASKS
from qr_ds.data.format import render_prompt, tokenizer_adds_specials
from qr_ds.data.pool import PathRecord
from qr_ds.mutual.spans import align_arrays
from qr_ds.train.config import TrainConfig


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # -100 on prompt tokens: the SFT loss covers the response only
    span_ids: list[int]  # -1 outside every shared span
    truncated: bool = False  # cut at the student's max_len: the end of the path is not trained on
    unseen_chars: int = 0  # characters of the path past the cut


R = TypeVar("R")


def selected(cfg: TrainConfig, stream: Iterable[tuple[int, R]]) -> Iterator[tuple[int, R]]:
    """The (line, record) pairs the trainer trains on, in pool order, streamed: the ok ones; with
    ``data.quality_filter`` those the filter judged right and the judge did not reject; those of the
    questions ``data.question_fraction`` picks; the first ``data.paths_per_question`` of each question;
    each as the tasks of ``data.objective``; at most ``data.limit``. Raises if none is left."""
    per_question: Counter = Counter()
    n = ok = checked = 0
    for line, r in stream:
        if not r.ok:
            continue
        ok += 1
        if cfg.data.quality_filter:
            checked += r.correct is not None
            # The filter decides what an UNPARSEABLE verdict means (keep_unparseable) and writes only
            # what it keeps; here only what it rejected outright is dropped, so both agree.
            if not r.correct or (r.judge is not None and r.judge.verdict == "INVALID"):
                continue
        if cfg.data.question_fraction < 1 and not picked(cfg.data.question_seed, source_question(r),
                                                         cfg.data.question_fraction):
            continue
        if cfg.data.paths_per_question:
            if per_question[r.question_id] >= cfg.data.paths_per_question:
                continue
            per_question[r.question_id] += 1
        for task_record in as_tasks(cfg.data.objective, r, f"{cfg.data.pool}:{line}"):
            yield line, task_record
            n += 1
            if n == cfg.data.limit:
                return
    if n == 0 and ok and cfg.data.quality_filter and not checked:
        raise ValueError(f"{cfg.data.pool}: no record has 'correct' set: run `qr-ds filter` first, "
                         "or set data.quality_filter: false to train on unfiltered paths")
    if n == 0:
        raise ValueError(f"{cfg.data.pool}: no paths left to train on after selection "
                         f"(quality_filter={cfg.data.quality_filter}, paths_per_question={cfg.data.paths_per_question}, "
                         f"question_fraction={cfg.data.question_fraction})")


def source_question(r: PathRecord) -> str:
    """The question a path stems from: a written question's (data/baselines.py) original, so a
    question's share of the data holds what was written from it too."""
    return (r.meta.get("example_meta") or {}).get("source_id", r.question_id)


def picked(seed: int, question_id: str, fraction: float) -> bool:
    """Whether ``question_fraction`` keeps this question: a hash of the data seed and the id alone, so
    every method and every pool of the same questions keeps the same ones (about ``fraction`` of them)."""
    digest = hashlib.blake2b(f"{seed}|{question_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2 ** 64


def task_of(r: PathRecord) -> str:
    return r.train_task or MAIN


def cut_states_wrong_answer(r: PathRecord, unseen_chars: int) -> bool:
    """Whether a path cut at a student's max_len states, in the part the student sees, an answer that
    is not the gold: the answer filter's check applied to what that student trains on. A path kept
    for its right final answer can show a wrong interim one before the cut (a check that finds it
    comes later), and a short-context student then learns the wrong one."""
    if unseen_chars <= 0 or not r.response or task_of(r) != MAIN:
        return False
    from qr_ds.filter.run import checked_answer

    seen = len(r.response) - unseen_chars
    if r.response[seen].isspace():  # a space or line break right after the cut: what precedes it is whole
        seen += 1
    stated, right = checked_answer(r, r.response[:seen], partial=True)
    return stated is not None and not right


def as_tasks(objective: str, r: PathRecord, where: str) -> list[PathRecord]:
    """The record as each task ``objective`` trains it as (data/baselines.py OBJECTIVES): itself, or
    copies whose question and target are the task's, each id suffixed with its task."""
    if task_of(r) not in TRAIN_TASKS:
        raise ValueError(f"{where}: path {r.id} has train_task {r.train_task!r}; known: {', '.join(TRAIN_TASKS)}")
    tasks = OBJECTIVES[objective].get(task_of(r))
    if tasks is None:
        return [r]
    out = []
    for task in tasks:
        question, response = TARGETS[task](r)
        out.append(dataclasses.replace(r, id=f"{r.id}#{task}", question=question, response=response, train_task=task))
    return out


def select_paths(cfg: TrainConfig, records: list[R]) -> list[R]:
    return [r for _, r in selected(cfg, enumerate(records))]


def chunked(items: Iterable[R], size: int) -> Iterator[list[R]]:
    it = iter(items)
    while part := list(islice(it, size)):
        yield part


def instruction_for(task: str) -> str:
    from qr_ds.tasks import get_task

    return get_task(task).instruction


@dataclass
class EncodedArrays:
    """One student's encoding of one path, as the builder writes it."""

    input_ids: np.ndarray  # int32
    is_label: np.ndarray  # bool: response and EOS tokens
    span_ids: np.ndarray  # -1 outside every shared span
    truncated: bool
    unseen_chars: int

    def to_encoded(self) -> Encoded:
        ids = self.input_ids.tolist()
        return Encoded(ids, np.where(self.is_label, self.input_ids, -100).tolist(), self.span_ids.tolist(),
                       self.truncated, self.unseen_chars)


def rust_pipeline(tok):
    """The fast tokenizer's Rust pipeline, set as the tokenizer's own call with default arguments
    sets it (no truncation, no padding, its ``split_special_tokens``): the same ids and offsets,
    without that call's per-token conversion to Python lists (a third of its time)."""
    from tokenizers import Tokenizer

    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"tokenizer {type(tok).__name__} gives no offset mapping; qr_ds aligns students on "
                         "character spans and needs a fast tokenizer (use_fast=True)")
    copy = Tokenizer.from_str(backend.to_str())  # the caller's tokenizer keeps its settings
    copy.no_truncation()
    copy.no_padding()
    copy.encode_special_tokens = bool(getattr(tok, "split_special_tokens", False))
    return copy


def _encode_chunk(tok, pipeline, prompts: list[str], responses: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per path: ids and (T, 2) offsets of prompt + response + EOS, BOS exactly once (as encode_sft_batch)."""
    eos = tok.eos_token or ""
    out: list = [None] * len(prompts)
    groups: dict[bool, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(tokenizer_adds_specials(tok, prompt), []).append(i)
    for specials, rows in groups.items():
        encs = pipeline.encode_batch([prompts[i] + responses[i] + eos for i in rows], add_special_tokens=specials)
        for i, e in zip(rows, encs):
            out[i] = (np.array(e.ids, np.int32), np.array(e.offsets, np.int64).reshape(-1, 2))
    return out


class ChunkEncoder:
    """Tokenizes and aligns a chunk of paths for every student: one batched call per student."""

    def __init__(self, tokenizers: list, lens: Sequence[int], max_spans: int):
        self.tokenizers, self.lens, self.max_spans = tokenizers, lens, max_spans
        self.pipelines = [rust_pipeline(tok) for tok in tokenizers]
        self.instructions: dict[str, str] = {}

    def __call__(self, part: Sequence[PathRecord]) -> list[tuple[list[EncodedArrays], int]]:
        """Per path, in order: each student's ``EncodedArrays`` and the number of shared spans."""
        for r in part:
            if r.task not in self.instructions:
                self.instructions[r.task] = instruction_for(r.task)
        responses = [r.response for r in part]
        # a task's prefix tells the student which task of a multi-task objective it is asked to do
        keys = [(r.task, TRAIN_TASKS[task_of(r)].prefix + r.question) for r in part]
        prompts = []
        for tok in self.tokenizers:  # one rendering per question: its paths (styles, samples) share it
            rendered: dict[tuple[str, str], str] = {}
            for task, question in keys:
                if (task, question) not in rendered:
                    rendered[task, question] = render_prompt(tok, question, self.instructions[task])
            prompts.append([rendered[k] for k in keys])
        batches = [_encode_chunk(tok, pipe, p, responses) for tok, pipe, p in zip(self.tokenizers, self.pipelines, prompts)]
        return [_align(len(rec.response), [b[j] for b in batches], [len(p[j]) for p in prompts], self.lens,
                       self.max_spans) for j, rec in enumerate(part)]


def _align(n_chars: int, encs: list[tuple[np.ndarray, np.ndarray]], rstarts: list[int], lens: Sequence[int],
           max_spans: int) -> tuple[list[EncodedArrays], int]:
    cut, rel, ends, labels = [], [], [], []
    for (ids, offs), rstart, n in zip(encs, rstarts, lens):
        a, b = offs[:n, 0], offs[:n, 1]
        live = b > a
        labels.append(live & (a >= rstart))  # the response and the EOS after it (an added token keeps its offsets)
        # offsets relative to the response: prompts differ per student, the path text does not
        rel.append(np.where(live[:, None], offs[:n] - rstart, 0))
        ends.append(int(b[live].max(initial=rstart)) - rstart)
        cut.append(len(ids) > n)
    end = min(min(ends), n_chars)  # spans only where every student kept the text
    n_spans, span_ids = align_arrays(rel, end, max_spans)
    out = [EncodedArrays(ids[:n], lab, sid, c, n_chars - min(e, n_chars) if c else 0)
           for (ids, _), n, lab, sid, c, e in zip(encs, lens, labels, span_ids, cut, ends)]
    return out, n_spans


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
    encode = ChunkEncoder(tokenizers, lens, max_spans)
    for part in progress(chunked(recs, 1024), total=-(-len(recs) // 1024), desc="tokenize+align", unit="chunk"):
        for encs, n in encode(part):
            for s, e in enumerate(encs):
                per_student[s].append(e.to_encoded())
            n_spans.append(n)
    return per_student, n_spans
