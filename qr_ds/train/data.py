"""Training data: the selected paths, tokenized for every student and aligned on shared character spans.

Encoding runs once per node (train/prepared.py); every rank maps the result, and every rank's
``TrainData`` is the same (deterministic), so batch order, chunking and spans agree across ranks
without communication.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

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


def unseen_nats_of(unseen_chars: list[torch.Tensor], response_tokens: list[torch.Tensor], vocab_sizes: list[int],
                   response_chars: torch.Tensor) -> torch.Tensor:
    """[N, S] nats each student is charged for the text its context cut off. A path a student cannot
    see whole is one it cannot learn, so its loss on the kept prefix must not pass for its loss on
    the path (that would route long paths to the student that cuts them). The charge is what an
    untrained model pays: log(vocab) per token, at the student's own tokens per character (from the
    per-path counts of characters cut off and response tokens kept, per student)."""
    out = []
    for unseen, tokens, vocab in zip(unseen_chars, response_tokens, vocab_sizes):
        tokens_per_char = int(tokens.sum()) / max(float((response_chars - unseen).sum()), 1.0)
        out.append(unseen * tokens_per_char * math.log(vocab))
    return torch.stack(out, dim=1)


def collate(items: list[Encoded], pad_id: int, device) -> dict[str, torch.Tensor]:
    T = max(len(e.input_ids) for e in items)
    B = len(items)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    spans = torch.full((B, T), -1, dtype=torch.long)
    for i, e in enumerate(items):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(e.labels)
        spans[i, :n] = torch.tensor(e.span_ids)
    return {k: v.to(device) for k, v in
            dict(input_ids=ids, attention_mask=mask, labels=labels, span_ids=spans).items()}


def question_groups(question_index: torch.Tensor, n_questions: int) -> list[torch.Tensor]:
    """Each question's path indices in path order, in one stable sort (a scan per question was O(N*Q))."""
    order = torch.sort(question_index, stable=True).indices
    counts = torch.bincount(question_index, minlength=n_questions).tolist()
    return list(torch.split(order, counts))


class TrainData:
    """The prepared training data (train/prepared.py), mapped: every rank reads the paths it trains on."""

    def __init__(self, cfg: TrainConfig, tokenizers: list, log: Callable[[str], None], progress=None):
        from qr_ds.distributed.wait import wait_for_all_ranks
        from qr_ds.train.prepared import Prepared, ensure_prepared

        p = Prepared(ensure_prepared(cfg, tokenizers, log, progress or (lambda it, **kw: it)))
        self.prepared = p
        self.records = p.paths  # style, level and question of each path (what the logs need)
        self.encoded = p.students
        self.n_spans = p.n_spans
        self.embeddings = torch.from_numpy(p.embeddings) if p.embeddings is not None else None
        max_lens = [cfg.max_len_of(s) for s in range(len(cfg.students))]
        # Per-path sizes: losses become nats per character (comparable across tokenizers) for the
        # router, and per token for the logged SFT loss.
        self.response_chars = torch.from_numpy(np.array(p.response_chars))
        self.unseen_nats = unseen_nats_of([torch.from_numpy(np.array(v.unseen_chars, np.float32)) for v in p.students],
                                          [torch.from_numpy(t) for t in p.response_tokens],
                                          [len(t) for t in tokenizers], self.response_chars)
        self.response_tokens = [torch.from_numpy(t).clamp(min=1).float() for t in p.response_tokens]
        self.question_index = torch.from_numpy(np.array(p.question_index))
        n_q = p.meta["n_questions"]
        self._by_question = question_groups(self.question_index, n_q)
        self.seed, self.by_question = cfg.seed, cfg.data.batch_order == "by_question"
        log(f"training on {len(self)} paths of {n_q} questions")
        cut = [int(np.count_nonzero(v.truncated)) for v in p.students]
        names = [s.name for s in cfg.students]
        log("paths cut at the students' max_len: " + ", ".join(
            f"{n} {c} ({100 * c / len(self):.1f}%) at {m}" for n, c, m in zip(names, cut, max_lens)))
        # Ranks reach here minutes apart when one node built and another reused: wait without the
        # collective timeout, so the first collective after this finds every rank ready.
        wait_for_all_ranks("training data")

    def __len__(self) -> int:
        return len(self.records)

    def epoch_batches(self, epoch: int, batch: int) -> list[torch.Tensor]:
        """The global batch order of ``epoch``: the same on every rank. Paths are shuffled, or with
        ``by_question`` questions are shuffled and each keeps its paths together (eq. 3 then balances
        routing over all of a question's paths); the last batch wraps to the start of the order, so
        no path is skipped."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        if self.by_question:
            order = torch.cat([self._by_question[q][torch.randperm(len(self._by_question[q]), generator=g)]
                               for q in torch.randperm(len(self._by_question), generator=g).tolist()])
        else:
            order = torch.randperm(len(self.records), generator=g)
        n = -(-len(order) // batch)
        padded = torch.cat([order, order[: n * batch - len(order)]]) if n * batch > len(order) else order
        return list(padded.view(n, batch))

    def span_mask(self, idx: torch.Tensor, max_spans: int) -> torch.Tensor:
        counts = torch.as_tensor(np.asarray(self.n_spans)[idx.numpy()], dtype=torch.long)
        return torch.arange(max_spans)[None, :] < counts[:, None]
