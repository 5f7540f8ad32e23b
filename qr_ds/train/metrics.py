"""Per-step metrics on the coordinator: JSONL always, TensorBoard when installed."""
from __future__ import annotations

import resource
from collections import Counter
from pathlib import Path

import torch

from qr_ds.data.jsonl import JsonlAppender


def peak_memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


class MetricsLog:
    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = JsonlAppender(out_dir / "metrics.jsonl", fsync=False)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"))
            except ImportError:  # tensorboard is optional
                self.tb = None

    def step(self, pos, rec: dict, names: list[str], data, idx: torch.Tensor, dt: float) -> dict:
        if not self.enabled:
            return {}
        stats, hard = rec["stats"], rec["hard"]
        row: dict = {"step": pos.step, "epoch": pos.epoch, "micro_step": pos.micro_step, "step_s": dt,
                     "mutual_loss": rec["mutual"], "exchange_s": rec["exchange_s"],
                     "exchange_bytes": rec["exchange_bytes"],
                     "peak_mem_GiB": round(peak_memory_gib(), 3)}
        total_tok = 0.0
        for s, name in enumerate(names):
            n = float(stats[s, 1])
            row[f"sft_loss/{name}"] = float(stats[s, 0]) / n if n else None
            row[f"tokens_per_s/{name}"] = float(stats[s, 2]) / max(float(stats[s, 3]), 1e-9)
            row[f"routed/{name}"] = n / len(idx)
            row[f"compute_s/{name}"] = float(stats[s, 3])  # forward, probes, backward and step
            row[f"exchange_s/{name}"] = float(stats[s, 4])  # waiting for peers + the all-gathers
            total_tok += float(stats[s, 2])
        row["tokens_per_s"] = total_tok / max(dt, 1e-9)
        row["loss_sum"] = sum(v for k, v in row.items() if k.startswith("sft_loss/") and v is not None)
        for k, v in rec.items():
            if k.startswith("router") and isinstance(v, float):
                row[k] = v
        recs = [data.records[i] for i in idx.tolist()]
        for key, values in (("route_rate", [r.style for r in recs]), ("route_rate_level", [r.level for r in recs])):
            if key == "route_rate_level" and all(v is None for v in values):
                continue
            count = Counter(values)
            for s, name in enumerate(names):  # routed / seen, per style (Figure 4) and per level (Figure 5)
                hit = Counter(v for v, h in zip(values, hard[:, s].tolist()) if h > 0)
                row[f"{key}/{name}"] = {str(v): [hit[v], count[v]] for v in sorted(count, key=str)}
        styles = [r.style for r in recs]
        for s, name in enumerate(names):  # every student's loss on every style of the batch (probes included)
            per_style: dict[str, list[float]] = {}
            for style, v in zip(styles, rec["nats_per_char"][:, s].tolist()):
                if v == v:  # not NaN
                    acc = per_style.setdefault(style, [0.0, 0])
                    acc[0], acc[1] = acc[0] + v, acc[1] + 1
            row[f"style_nats_per_char/{name}"] = per_style
        self.jsonl.write(row)
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and v is not None:
                    self.tb.add_scalar(k, v, pos.step)
        return row

    def eval(self, result: dict) -> None:
        """A finished background evaluation, into eval.jsonl (and TensorBoard)."""
        if not self.enabled:
            return
        with JsonlAppender(self.jsonl.path.with_name("eval.jsonl"), fsync=False) as out:
            out.write(result)
        if self.tb is not None:
            for k, v in result.get("accuracy", {}).items():
                self.tb.add_scalar(f"eval/{k}", v, result["step"])

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            if self.tb is not None:
                self.tb.close()
