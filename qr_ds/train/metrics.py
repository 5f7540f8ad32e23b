"""Per-step metrics on the coordinator: RUN/metrics.jsonl always, plus the ``report_to`` sinks
(TensorBoard, Weights & Biases, trackio). A resumed run first cuts every log back to its checkpoint's
step, so each step appears exactly once."""
from __future__ import annotations

import json
import os
import resource
import secrets
from pathlib import Path

import torch

from qr_ds.data.jsonl import JsonlAppender, iter_jsonl, repair_tail, write_jsonl
from qr_ds.routing.rates import RoutingTally
from qr_ds.run_layout import RunDir
from qr_ds.train.stats import MicroStep


def peak_memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def truncate_jsonl(path, after_step: int) -> None:
    """Drop rows past ``after_step``: the steps a crashed run logged after its last checkpoint."""
    if path.is_file():
        repair_tail(path)  # half a row a kill left cannot be read back; the resume stopped on it
        rows = list(iter_jsonl(path))  # lines end at "\n" only: splitlines() also cuts at U+2028
        write_jsonl(path, [r for r in rows if r.get("step", 0) <= after_step])


def router_scalars(rec: dict[str, float], names: list[str]) -> dict[str, float]:
    """router_loss, router/entropy, ...: per-student keys named by student, and router/rate/<s>
    left out (the batch's routed share, logged as routed/<name>)."""
    out = {}
    for k, v in rec.items():
        if not (k.startswith("router") and isinstance(v, float)) or k.startswith("router/rate/"):
            continue
        head, _, tail = k.rpartition("/")
        out[f"{head}/{names[int(tail)]}" if head and tail.isdigit() else k] = v
    return out


class _TensorBoard:
    def __init__(self, run: RunDir, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides events at and after it that the crashed run wrote
        self.w = SummaryWriter(str(run.tensorboard), purge_step=None if resume_step is None else resume_step + 1)

    def log(self, scalars: dict, step: int) -> None:
        for k, v in scalars.items():
            self.w.add_scalar(k, v, step)

    def close(self) -> None:
        self.w.close()


TRACKING = "tracking.json"  # RUN/tracking.json: each tracker's run id, kept for the resumed run


def tracking_ids(run: RunDir, resume: bool) -> dict:
    """The trackers' run ids of this run folder: read back on resume, new (and stored) otherwise, so
    a resumed run continues the same wandb / trackio run instead of starting a second one."""
    path = run.root / TRACKING
    if resume and path.is_file():
        return json.loads(path.read_text())
    ids = {"wandb": secrets.token_hex(4)}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ids))
    tmp.replace(path)
    return ids


class _Tracker:
    """wandb and trackio share the ``init / log / finish`` API. The project comes from WANDB_PROJECT
    (TRACKIO_PROJECT for trackio) when set; wandb's files go under the run folder."""

    def __init__(self, module: str, run: RunDir, config: dict, name: str, resume: bool, ids: dict):
        import importlib

        self.m = importlib.import_module(module)
        if module == "wandb":
            self.run = self.m.init(project=os.environ.get("WANDB_PROJECT") or "qr_ds", name=name, id=ids["wandb"],
                                   resume="allow", config=config, dir=str(run.root))
        else:  # trackio names a run by its name, and resumes by it
            self.run = self.m.init(project=os.environ.get("TRACKIO_PROJECT") or "qr_ds", name=f"{name}-{ids['wandb']}",
                                   config=config, resume="allow" if resume else "never")

    def log(self, scalars: dict, step: int) -> None:
        self.m.log(scalars, step=step)

    def close(self) -> None:
        self.m.finish()


def run_name(config: dict) -> str:
    """The ``run_name`` key; else the run folder's last two parts ("gsm8k/train", not every README run's "train")."""
    return config.get("run_name") or "/".join(Path(config.get("output_dir", "run")).parts[-2:])


class MetricsLog:
    def __init__(self, run: RunDir, enabled: bool, report_to: list[str], config: dict, resume_step: int | None):
        self.enabled = enabled
        self.sinks: list = []
        if not enabled:
            return
        run.root.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            truncate_jsonl(run.metrics, resume_step)
            truncate_jsonl(run.eval_log, resume_step)
        self.jsonl = JsonlAppender(run.metrics, fsync=False)
        self.eval_path = run.eval_log
        resume = resume_step is not None
        ids = tracking_ids(run, resume) if {"wandb", "trackio"} & set(report_to) else {}  # once: both read one id
        for backend in report_to:
            if backend == "tensorboard":
                self.sinks.append(_TensorBoard(run, resume_step))
            elif backend in ("wandb", "trackio"):
                self.sinks.append(_Tracker(backend, run, config, run_name(config), resume, ids))

    def step(self, pos, rec: MicroStep, names: list[str], data, idx: torch.Tensor, dt: float) -> dict:
        if not self.enabled:
            return {}
        stats, hard = rec.stats, rec.hard
        row: dict = {"step": pos.step, "epoch": pos.epoch, "micro_step": pos.micro_step, "step_s": dt,
                     "exchange_s": rec.exchange_s, "exchange_bytes": rec.exchange_bytes,
                     "peak_mem_GiB": round(peak_memory_gib(), 3)}
        if rec.mutual_loss is not None:  # absent, not 0.0, where no path had a mutual term
            row["mutual_loss"] = rec.mutual_loss
        for s, name in enumerate(names):
            st = stats.students[s]
            row[f"sft_loss/{name}"] = st.sft_loss_sum / st.routed if st.routed else None
            row[f"tokens_per_s/{name}"] = st.tokens / max(st.compute_s, 1e-9)
            row[f"tokens_seen/{name}"] = pos.tokens_seen[s]
            row[f"routed/{name}"] = st.routed / len(idx)  # the routing rate
            row[f"compute_s/{name}"] = st.compute_s
            row[f"lr/{name}"] = st.lr
            row[f"grad_norm/{name}"] = st.grad_norm if st.grad_norm == st.grad_norm else None  # NaN: none yet
        row["tokens_per_s"] = sum(st.tokens for st in stats.students) / max(dt, 1e-9)
        # what the students minimise together (eq. 9 without the router's terms, logged as router_loss)
        row["loss"] = (sum(v for k, v in row.items() if k.startswith("sft_loss/") and v is not None)
                       + rec.lambda2 * row.get("mutual_loss", 0.0))
        row.update(router_scalars(rec.router, names))
        recs = [data.records[i] for i in idx.tolist()]
        for key, values in (("route_rate", [r.style for r in recs]), ("route_rate_level", [r.level for r in recs])):
            if key == "route_rate_level" and all(v is None for v in values):
                continue
            tally = RoutingTally(names)  # routed / seen, per style (Figure 4) and per level (Figure 5)
            tally.update((hard > 0).float(), [str(v) for v in values])
            for name, cells in tally.per_student().items():
                row[f"{key}/{name}"] = {v: [int(routed), seen] for v, (routed, seen) in cells.items()}
        styles = [r.style for r in recs]
        # every student's loss on every style of the batch, probes included; a pair data.drop_cut_wrong keeps
        # from a student is measured only where a forward ran anyway (one pass), so it is mostly absent
        for s, name in enumerate(names):
            per_style: dict[str, list[float]] = {}
            for style, v in zip(styles, rec.nats_per_char[:, s].tolist()):
                if v == v:  # not NaN
                    acc = per_style.setdefault(style, [0.0, 0])
                    acc[0], acc[1] = acc[0] + v, acc[1] + 1
            row[f"style_nats_per_char/{name}"] = per_style
        self.jsonl.write(row)
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        for sink in self.sinks:
            sink.log(scalars, pos.step)
        return row

    def eval(self, result: dict) -> None:
        """A finished background evaluation, into eval.jsonl (and the other sinks)."""
        if not self.enabled:
            return
        with JsonlAppender(self.eval_path, fsync=False) as out:
            out.write(result)
        acc = {f"eval/{k}": v for k, v in result.get("accuracy", {}).items()}
        for sink in self.sinks:
            sink.log(acc, result["step"])

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            for sink in self.sinks:
                sink.close()
