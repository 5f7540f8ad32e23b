"""The QR-Distill train loop (eq. 9). One micro-step, on every rank:

1. all ranks take the same global batch (seeded order);
2. the coordinator routes it (router MLP on frozen embeddings, straight-through Gumbel) and
   broadcasts the hard assignments;
3. each local student trains on the paths of its chunks routed to it (response-only SFT) and
   pools its last hidden states over the spans shared by all tokenizers;
4. projected span states are all-gathered in each chunk's cross-student group, and every student
   adds the mutual loss (eq. 5-8) with its own states live and its peers' detached;
5. one backward and step per engine; per-path losses go back to the coordinator, whose router
   gets its gradient through the straight-through estimator plus the balance term (lambda1).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from qr_ds.config import to_dict
from qr_ds.distributed.strategy import StudentEngine, Strategy
from qr_ds.mutual.exchange import MutualExchange, Share
from qr_ds.routing.policy import make_policy
from qr_ds.train.checkpoint import Checkpointer, StudentSlot
from qr_ds.train.config import TrainConfig
from qr_ds.train.data import TrainData, collate
from qr_ds.train.metrics import MetricsLog
from qr_ds.train.optim import build_optimizer, build_schedule
from qr_ds.train.position import Position
from qr_ds.train.stats import MicroStep, StepStats, StudentStats
from qr_ds.train.student import build_student, load_tokenizer, param_groups


@dataclass
class LocalStudent:
    index: int
    name: str
    engine: StudentEngine  # built by the strategy: every DeepSpeed call goes through it
    pad_id: int
    dp_size: int


class Trainer:
    def __init__(self, cfg: TrainConfig, strategy: Strategy, log=print):
        """``strategy`` is built by the caller (launch.py, or a test on a world of one), already
        holding its process groups."""
        self.cfg, self.strategy = cfg, strategy
        self.is_coord = strategy.is_coordinator
        self.say = log if self.is_coord else (lambda *_: None)
        self.run = cfg.run
        S = len(cfg.students)
        # Tokenizers first: a bad tokenizer or an empty pool is refused before any model loads.
        self.tokenizers = [load_tokenizer(s) for s in cfg.students]
        self.data = TrainData(cfg, self.tokenizers, self.say, progress=self._progress)
        self.layout = strategy.layout
        self.P = cfg.micro_batch_paths * self.layout.n_chunks
        micro_per_epoch = math.ceil(len(self.data.trained) / self.P)
        total = cfg.epochs * micro_per_epoch // cfg.grad_accum
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps else total
        if self.total_steps < 1:
            raise ValueError(f"{len(self.data.trained)} paths at {self.P} per micro-step and grad_accum "
                             f"{cfg.grad_accum} give no optimizer step; lower grad_accum or micro_batch_paths")
        self.students = [self._build(s) for s in strategy.local_students]
        # ZeRO-3 prefetches by a recorded module order that must repeat every step, and the mutual term
        # on every path needs every path's states with grad: then each student forwards its whole
        # chunk in one pass (unrouted paths at SFT weight 0) and never probes.
        everywhere = cfg.use_mutual and cfg.mutual.paths == "all"
        self.one_pass = everywhere or any(st.engine.zero3 for st in self.students)
        self.exchange = None
        if cfg.use_mutual:
            self.exchange = MutualExchange(cfg.mutual, cfg.lambda2, cfg.micro_batch_paths, strategy)
        # On every rank, so every rank knows what the policy needs; a learned router is built on the
        # coordinator only, and the others follow its broadcast.
        self.routing = make_policy(cfg.router, self.data.embeddings, [s.name for s in cfg.students],
                                   self.data.prepared.styles, cfg.lambda1, cfg.seed, coordinator=self.is_coord,
                                   path_styles=self.data.styles, path_ids=self.data.prepared.path_ids)
        if cfg.router.assigned:  # with the answer check's pairs: what each student will in fact not see
            allowed = self.routing.allowed[self.data.trained]
            kept = allowed * self.data.trainable[self.data.trained].float()
            self.say("fixed routing: " + ", ".join(f"{s.name} never trains on {k} of {len(self.data.trained)} paths"
                                                   for s, k in zip(cfg.students, (1 - kept).sum(0).int().tolist()))
                     + (" (the assignment and data.drop_cut_wrong)" if bool((kept < allowed).any()) else ""))
        if self.is_coord and cfg.data.drop_cut_wrong:  # the report shows these pairs as never trained on
            self.data.write_kept_from(self.run.kept_from, [s.name for s in cfg.students])
        self._ahead: tuple[torch.Tensor, torch.Tensor] | None = None  # (measured batch, its losses before the step)
        self.holdout = len(self.data.heldout) > 0
        self.pos = Position()
        self.evaluator = None
        if cfg.eval.every_steps and self.is_coord:  # a separate process: training waits only for the hand-off
            from qr_ds.train.evaluator import BackgroundEvaluator

            self.evaluator = BackgroundEvaluator(cfg.eval, self.run.evaluations, log=self.say)
        slots = [StudentSlot(st.name, st.engine, cfg.students[st.index].finetune, self.tokenizers[st.index])
                 for st in self.students]
        self.checkpointer = Checkpointer(self.run, strategy, cfg, self.total_steps, slots, self.pos,
                                         {"router": self.routing} if self.routing.learns else {},
                                         self.evaluator, self.say)
        self.names = [s.name for s in cfg.students]

    def _build(self, s: int) -> LocalStudent:
        cfg, sc = self.cfg, self.cfg.students[s]
        torch.manual_seed(cfg.seed + s)  # the same LoRA and head init on every rank of a student
        module = build_student(sc, cfg.mutual if cfg.use_mutual else None, self.strategy.device)
        opt = build_optimizer(param_groups(module, sc, cfg.mutual.head_lr), cfg.optimizer)
        sched = build_schedule(opt, cfg.lr_schedule, cfg.warmup_steps, self.total_steps, cfg.min_lr_ratio)
        engine = self.strategy.prepare_student(s, module, opt, sched, cfg)
        return LocalStudent(s, sc.name, engine, self.tokenizers[s].pad_token_id, len(self.layout.student_ranks[s]))

    def _progress(self, it, **kw):
        return tqdm(it, disable=not self.is_coord, **kw)

    # -- one micro-step -----------------------------------------------------------------------
    def route(self, idx: torch.Tensor) -> torch.Tensor:
        """Hard 0/1 routing [P, S], the same on every rank (the coordinator's policy decides), never to
        a student a path is not trainable for (data.drop_cut_wrong)."""
        trainable = self.data.trainable[idx].float()
        if not self.routing.learns:  # no router, or a fixed assignment: the same on every rank
            return self.routing.route(None, idx) * trainable
        hard = (self.routing.route(self.data.embeddings[idx], trainable=trainable) if self.is_coord
                else torch.zeros(len(idx), len(self.names)))
        return self.strategy.broadcast_from_coordinator(hard)

    def forward_student(self, st: LocalStudent, idx: torch.Tensor, positions: list[int], hard: torch.Tensor,
                        states: bool = True):
        """Forward ``positions`` of the batch for one student. The SFT weight of a path is
        dp_size / P, so averaging over the student's data-parallel ranks gives the global mean."""
        dev = self.strategy.device
        items = [self.data.encoded[st.index][i] for i in idx[positions].tolist()]
        batch = collate(items, st.pad_id, dev)
        labels = batch["labels"]
        n_tok = (labels[:, 1:] != -100).sum(1, keepdim=True).clamp(min=1)
        w_path = hard[positions, st.index].to(dev) * self.data.path_weight[idx[positions]].to(dev) * st.dp_size / self.P
        weights = torch.zeros_like(labels, dtype=torch.float32)
        weights[:, 1:] = (labels[:, 1:] != -100) * (w_path[:, None] / n_tok)
        M = self.cfg.mutual.max_spans if self.cfg.use_mutual and states else 0
        return st.engine(batch["input_ids"], batch["attention_mask"], labels, weights, batch["span_ids"], M)

    def my_positions(self, st: LocalStudent) -> torch.Tensor:
        """Positions in the global batch of this rank's chunks of student ``st``."""
        c = self.cfg.micro_batch_paths
        return torch.tensor([k * c + j for k in self.layout.chunks_of(st.index, self.strategy.rank) for j in range(c)])

    def probe(self, st: LocalStudent, idx: torch.Tensor, positions: torch.Tensor, path_loss: torch.Tensor,
              row: int = 0) -> None:
        """Nats per path of ``positions`` without grad into ``path_loss[row]`` (and known into row + 1):
        the router's view of paths a student does not train on, and the held-out losses of the gain signal."""
        if not len(positions):
            return
        with torch.no_grad():
            _, nats, _, _ = self.forward_student(st, idx, positions.tolist(), torch.ones(len(idx), len(self.names)),
                                                 states=False)
        path_loss[row, positions, st.index] = nats.float().cpu()
        path_loss[row + 1, positions, st.index] = 1

    def train_forward(self, st: LocalStudent, idx: torch.Tensor, hard: torch.Tensor, path_loss: torch.Tensor,
                      stats: StepStats) -> tuple[torch.Tensor, Share | None]:
        """Forward with grad the paths of this rank's chunks routed to ``st``; forward without grad the
        rest it may train on, so the router still sees this student's loss on every such path at a third
        of the cost of training on it. ``path_loss`` gets total nats per path; ``stats`` the SFT loss, paths and
        tokens. Returns the loss and, with the mutual term on, what the student brings to the exchange."""
        chunks = self.layout.chunks_of(st.index, self.strategy.rank)
        pos_t = self.my_positions(st)
        routed = hard[pos_t, st.index] > 0
        # An engine must backprop every micro-step (its data-parallel peers and ZeRO's hooks wait
        # for it), so a student with nothing routed here trains one path at weight 0.
        train = pos_t if self.one_pass else pos_t[routed] if routed.any() else pos_t[:1]
        loss, nats, z, logit = self.forward_student(st, idx, train.tolist(), hard)
        path_loss[0, train, st.index] = nats.detach().float().cpu()
        path_loss[1, train, st.index] = 1
        if self.routing.learns:  # not the pairs the data keeps out: no routing decision rests on them
            probe = ~routed & ~torch.isin(pos_t, train) & self.data.trainable[idx[pos_t], st.index]
            self.probe(st, idx, pos_t[probe], path_loss)
        n_tok = self.data.response_tokens[st.index][idx[pos_t[routed]]]
        mine = stats.students[st.index]
        mine.sft_loss_sum += float((path_loss[0, pos_t[routed], st.index] / n_tok).sum())
        mine.routed += int(routed.sum())
        mine.tokens += int(self.data.encoded[st.index].lengths[idx[train].numpy()].sum())
        if z is None:
            return loss, None
        # competence evidence: -log p(whole path), the text a short context cut off included
        nats = path_loss[0, pos_t, st.index] + self.data.unseen_nats[idx[pos_t], st.index]
        share = Share.scatter(z, logit, nats.to(z.device), torch.isin(pos_t, train), chunks)
        # the 0-weighted sum keeps the head in the graph when nothing of this chunk is co-routed
        return loss + 0.0 * (z.sum() + logit.sum()), share

    def micro_step(self, idx: torch.Tensor, ahead: torch.Tensor | None = None) -> MicroStep:
        """Route, forward, exchange, backward and step, learn (the module docstring's steps 2-5).
        ``ahead``: the batch after the coming optimizer step, when the gain signal measures it."""
        S = len(self.cfg.students)
        hard = self.route(idx)
        # [value, known] per (path, student), and the same for ``ahead``, summed to the coordinator
        path_loss = torch.zeros(4, self.P, S)
        stats = StepStats.zeros(S)
        losses, shares = {}, {}
        for st in self.students:
            t0 = time.perf_counter()
            losses[st.index], shares[st.index] = self.train_forward(st, idx, hard, path_loss, stats)
            stats.students[st.index].compute_s += time.perf_counter() - t0
        if ahead is not None:  # before any student steps: the held-out losses before the step
            for st in self.students:
                t0 = time.perf_counter()
                self.probe(st, ahead, self.my_positions(st), path_loss, row=2)
                stats.students[st.index].compute_s += time.perf_counter() - t0  # the gain signal's cost
        t_x = time.perf_counter()
        if self.exchange is not None:
            stats.mutual_loss = self.exchange(losses, shares, hard, self.data.span_mask(idx, self.cfg.mutual.max_spans),
                                              self.data.trainable[idx].float())
        t_x = time.perf_counter() - t_x
        for st in self.students:
            self.backward_step(st, losses[st.index], stats.students[st.index])
        return self.learn(idx, hard, path_loss, stats, t_x, ahead)

    def backward_step(self, st: LocalStudent, loss: torch.Tensor, mine: StudentStats) -> None:
        t0 = time.perf_counter()
        st.engine.backward(loss)
        st.engine.step()
        mine.compute_s += time.perf_counter() - t0
        if st.engine.writer:  # one rank per student reports, so the sum over ranks is the value
            mine.lr, mine.grad_norm = st.engine.lr_and_grad_norm()

    def per_char(self, idx: torch.Tensor, nats: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """Nats per character of the whole path [P, S] (the same unit for every tokenizer and path
        length; the text a context cut off charged), NaN where not measured."""
        whole = nats + self.data.unseen_nats[idx]
        return torch.where(known > 0, whole / self.data.response_chars[idx][:, None], float("nan"))

    def learn(self, idx: torch.Tensor, hard: torch.Tensor, path_loss: torch.Tensor, stats: StepStats,
              exchange_s: float, ahead: torch.Tensor | None = None) -> MicroStep:
        """Per-path losses and stats summed to the coordinator, whose router learns from the losses in
        nats per character (and, with the gain signal, from the change of the held-out losses over the
        last optimizer step); returns the micro-step's record."""
        path_loss = self.strategy.sum_to_coordinator(path_loss)
        stats = StepStats.from_tensor(self.strategy.sum_to_coordinator(stats.to_tensor()))
        record = MicroStep(stats, hard, exchange_s, self.exchange.bytes_received if self.exchange is not None else 0,
                           self.cfg.lambda2)
        # the mutual term exists on co-routed paths only (every path with mutual.paths: all)
        if self.exchange is not None and self.exchange.acts_on(hard):
            record.mutual_loss = stats.mutual_loss
        if self.is_coord:
            per_char = self.per_char(idx, path_loss[0], path_loss[1])
            record.nats_per_char = per_char
            if self.routing.learns:
                # a pair the data keeps out decides nothing, even where a forward measured it (one pass,
                # or the weight-0 stand-in of a student with nothing routed)
                per_char = per_char.masked_fill(~self.data.trainable[idx], float("nan"))
                change = None
                now = self.per_char(ahead, path_loss[2], path_loss[3]) if ahead is not None else None
                # after the last step: this batch's own forward (the look-ahead), or the held-out
                # batch's forward of this micro-step (gain_holdout), when it was measured before the step
                after = now if self.holdout else per_char
                measured = ahead if self.holdout else idx
                if self._ahead is not None and measured is not None and torch.equal(self._ahead[0], measured):
                    delta = after - self._ahead[1]
                    if self.cfg.router.gain_heldout == "right":
                        delta = delta.masked_fill(self.data.cut_wrong[measured], float("nan"))
                    change = delta.nanmean(dim=0)
                if ahead is not None or not self.holdout:  # held-out batches pair across micro-steps
                    self._ahead = (ahead, now) if ahead is not None else None
                r = self.routing.learn(per_char, self.data.question_index[idx], scale=1 / self.cfg.grad_accum,
                                       heldout_change=change)
                record.router = {"router_loss": r.pop("loss"), **{f"router/{k}": v for k, v in r.items()}}
        return record

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict:
        cfg = self.cfg
        if resume:
            self.checkpointer.load()
        # a resumed run's logs are cut back to its checkpoint first: each step is logged once
        self.metrics = MetricsLog(self.run, self.is_coord, cfg.report_to, to_dict(cfg),
                                  self.pos.step if resume else None)
        self.say(f"{len(cfg.students)} students ({', '.join(self.names)}), placement {cfg.placement}, "
                 f"world {self.strategy.world_size}, {self.P} paths per micro-step, {self.total_steps} optimizer steps")
        bar = tqdm(total=self.total_steps, initial=self.pos.step, desc="train", unit="step", disable=not self.is_coord)
        last: dict = {}
        t_step = time.perf_counter()
        batches, epoch = None, None
        while self.pos.step < self.total_steps:
            if epoch != self.pos.epoch:
                batches, epoch = self.data.epoch_batches(self.pos.epoch, self.P), self.pos.epoch
            if self.pos.batch >= len(batches):
                self.pos.next_epoch()
                continue
            idx = batches[self.pos.batch]
            rec = self.micro_step(idx, self._gain_batch(batches))
            # each student's tokens of this batch, summed over ranks on the coordinator: its budget
            self.pos.after_micro_step([st.tokens for st in rec.stats.students])
            if self.pos.micro_step % cfg.grad_accum:
                continue
            if self.routing.learns:
                self.routing.step()
            self.pos.step += 1
            dt, t_step = time.perf_counter() - t_step, time.perf_counter()
            if self.pos.step % cfg.log_every == 0 or self.pos.step == self.total_steps:
                last = self.metrics.step(self.pos, rec, self.names, self.data, idx, dt)
            bar.update(1)
            bar.set_postfix(tok_s=f"{last.get('tokens_per_s', 0):.0f}", loss=f"{last.get('loss', 0):.3f}")
            self.checkpointer.maybe_save(self.pos.step)
            self._log_evals(self.evaluator.poll() if self.evaluator else [])
        self.checkpointer.maybe_save(self.pos.step, last=True)
        bar.close()
        if self.evaluator is not None:
            self._log_evals(self.evaluator.close(wait=True))
        self.metrics.close()
        return last

    def _gain_batch(self, batches: list[torch.Tensor]) -> torch.Tensor | None:
        """The batch to forward before this micro-step's optimizer step and again after it (the gain
        signal's held-out paths), or None when nothing is measured.

        With ``router.gain_holdout``, paths of questions no student trains on, every step of training.
        Else the next batch, not trained on yet, in the first epoch only: later every path has been
        trained on, and a step then raises the loss on paths the students had memorised (on the demo
        task, 6 epochs, the measured gains turned negative after the first and the router fell to
        rate_min); the critic keeps what it learned. ``router.gain_epochs: all`` measures every epoch
        (off by default: on harm_long its late changes were interference, by seed)."""
        cfg = self.cfg
        last_micro = (self.pos.micro_step + 1) % cfg.grad_accum == 0
        if self.holdout:
            return self.data.heldout_batch(self.pos.step, self.P) if self.routing.measures_gain and last_micro else None
        measured_epoch = self.pos.epoch == 0 or cfg.router.gain_epochs == "all"
        if not (self.routing.measures_gain and last_micro and measured_epoch
                and self.pos.step % cfg.router.gain_every == 0 and self.pos.batch + 1 < len(batches)):
            return None
        return batches[self.pos.batch + 1]

    def _log_evals(self, results: list[dict]) -> None:
        for r in results:
            self.metrics.eval(r)
            if "accuracy" in r:
                accs = ", ".join(f"{k} {v:.3f}" for k, v in r["accuracy"].items())
                self.say(f"eval step {r['step']}: {accs}")
