"""Training data: the selected paths, tokenized for every student and aligned on shared character spans.

Encoding runs once per node (train/prepared.py); every rank maps the result, and every rank's
``TrainData`` is the same (deterministic), so batch order, chunking and spans agree across ranks
without communication.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from qr_ds.train.config import TrainConfig
from qr_ds.train.encoding import Encoded


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


def path_weights(tasks: list[str], task_index: np.ndarray, overrides: dict[str, float]) -> torch.Tensor:
    """[N] loss weight of each path: its training task's (data.task_weights, else data/baselines.py's)."""
    from qr_ds.data.baselines import TRAIN_TASKS

    per_task = torch.tensor([overrides.get(t, TRAIN_TASKS[t].weight) for t in tasks] or [1.0], dtype=torch.float32)
    return per_task[torch.from_numpy(task_index.astype(np.int64))]


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


HOLDOUT_ROTATE = 16  # optimizer steps one held-out batch is measured for (one in 16 changes is lost)


def gain_holdout_of(cfg: TrainConfig) -> float:
    """The fraction of questions held out for the gain signal: only a learned router that measures gain holds any."""
    from qr_ds.routing.signals import SIGNALS

    r = cfg.router
    return r.gain_holdout if r.enabled and not r.assigned and SIGNALS[r.signal].needs_gain else 0.0


def held_out_questions(n_questions: int, fraction: float, seed: int) -> torch.Tensor:
    """Question indices held out of training (seeded; at least one when ``fraction`` > 0)."""
    n = max(1, round(fraction * n_questions)) if fraction > 0 else 0
    return torch.randperm(n_questions, generator=torch.Generator().manual_seed(seed * 7919 + 17))[:n].sort().values


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
        # [P, S]: the part of the path a student sees states a wrong answer (train/encoding.py)
        self.cut_wrong = torch.from_numpy(np.stack([np.asarray(v.cut_wrong) for v in p.students], axis=1) != 0)
        # [P, S] what each student may train on: data.drop_cut_wrong keeps those paths from it alone
        self.trainable = ~self.cut_wrong if cfg.data.drop_cut_wrong else torch.ones_like(self.cut_wrong)
        self.question_index = torch.from_numpy(np.array(p.question_index))
        self.styles = torch.from_numpy(np.asarray(p.style, dtype=np.int64))  # index into p.styles
        self.path_weight = path_weights(p.meta["train_tasks"], np.asarray(p.train_task), cfg.data.task_weights)
        n_q = p.meta["n_questions"]
        self.seed, self.by_question = cfg.seed, cfg.data.batch_order == "by_question"
        # router.gain_holdout: questions no student trains on, whose paths the gain signal measures
        held = held_out_questions(n_q, gain_holdout_of(cfg), cfg.seed)
        q_held = torch.zeros(n_q, dtype=torch.bool)
        q_held[held] = True
        is_held = q_held[self.question_index]
        self.heldout = torch.nonzero(is_held).flatten()
        # the order the held-out batches take them in, fixed for the run
        self._heldout_order = self.heldout[torch.randperm(len(self.heldout),
                                                          generator=torch.Generator().manual_seed(cfg.seed))]
        self._by_question = [g for q, g in enumerate(question_groups(self.question_index, n_q)) if not q_held[q]]
        self.trained = torch.nonzero(~is_held).flatten()
        if not len(self.trained):
            raise ValueError(f"config key 'router.gain_holdout': holding out {len(held)} of {n_q} questions "
                             f"leaves no path to train on")
        log(f"training on {len(self.trained)} paths of {n_q - len(held)} questions" + (
            f"; {len(self.heldout)} paths of {len(held)} held-out questions measure the gain signal"
            if len(held) else ""))
        cut = [int(np.count_nonzero(v.truncated)) for v in p.students]
        names = [s.name for s in cfg.students]
        log("paths cut at the students' max_len: " + ", ".join(
            f"{n} {c} ({100 * c / len(self):.1f}%) at {m}" for n, c, m in zip(names, cut, max_lens)))
        wrong = self.cut_wrong.sum(dim=0).tolist()
        if any(wrong):
            log("cut paths that state a wrong answer before the cut: " + ", ".join(
                f"{n} {w}" for n, w in zip(names, wrong)) + (
                "; each of those students does not train on them (data.drop_cut_wrong)" if cfg.data.drop_cut_wrong
                else "; trained on (data.drop_cut_wrong: false)"))
        # Ranks reach here minutes apart when one node built and another reused: wait without the
        # collective timeout, so the first collective after this finds every rank ready.
        wait_for_all_ranks("training data")

    def write_kept_from(self, path, names: list[str]) -> None:
        """The pairs the answer check keeps from training, one {"student", "path"} row each (the path's
        pool id), written atomically: what the report shows at P 0 whatever the router said."""
        from qr_ds.data.jsonl import write_jsonl

        pairs = torch.nonzero(self.cut_wrong).tolist()
        ids = self.prepared.path_ids() if pairs else []
        write_jsonl(path, ({"student": names[s], "path": ids[i]} for i, s in pairs))

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
            order = self.trained[torch.randperm(len(self.trained), generator=g)]
        n = -(-len(order) // batch)
        padded = torch.cat([order, order[: n * batch - len(order)]]) if n * batch > len(order) else order
        return list(padded.view(n, batch))

    def heldout_batch(self, step: int, batch: int) -> torch.Tensor:
        """The held-out paths the gain signal measures around optimizer step ``step``: one batch for
        ``HOLDOUT_ROTATE`` steps in a row, so that one forward per step measures the change over the
        previous step (the same paths before and after it), then the next, cycling over all of them."""
        order = self._heldout_order
        k = (step // HOLDOUT_ROTATE) % -(-len(order) // batch)
        return order[(k * batch + torch.arange(batch)) % len(order)]  # wraps, also when fewer than a batch

    def span_mask(self, idx: torch.Tensor, max_spans: int) -> torch.Tensor:
        counts = torch.as_tensor(np.asarray(self.n_spans)[idx.numpy()], dtype=torch.long)
        return torch.arange(max_spans)[None, :] < counts[:, None]
