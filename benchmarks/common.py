"""Shared benchmark plumbing: machine description, markdown tables, JSON results, optional PNG plots.

Every benchmark prints a markdown table and writes ``benchmarks/results/<name>-<device>.json``
holding the rows and the machine they were measured on. Numbers are only ever measured ones.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import torch

    info = {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": "cpu",
    }
    if torch.cuda.is_available():
        info["device"] = "cuda"
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_mem_GiB"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        try:
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "(no rows)"
    columns = list(columns or dict.fromkeys(k for r in rows for k in r))  # every row's keys, first seen first
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(out)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def save_results(name: str, rows: list[dict], extra: dict | None = None, out_dir: Path | None = None) -> Path:
    info = machine()
    out_dir = Path(out_dir or RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}-{info['device']}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": info, "rows": rows, **(extra or {})}, indent=1))
    return path


def plot_bars(path: Path, rows: list[dict], label: str, value: str, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.4 * len(rows)))
    ax.barh([str(r[label]) for r in rows], [float(r[value]) for r in rows])
    ax.set_xlabel(value)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def timeit(fn: Callable[[], object], warmup: int = 1, iters: int = 3, sync: Callable[[], None] | None = None) -> float:
    """Median wall seconds of ``fn`` over ``iters`` runs after ``warmup``."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def base_argparser(description: str, results_name: str | None = None) -> argparse.ArgumentParser:
    """The options every benchmark takes; with ``results_name``, also ``--name`` (its default)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--size", choices=["toy", "full"], default=None,
                   help="toy: CPU-sized shapes (default without CUDA); full: the 7B shapes (default with CUDA)")
    p.add_argument("--out", type=Path, default=None, help="folder for JSON/PNG (default benchmarks/results)")
    p.add_argument("--plot", action="store_true", help="also draw a PNG")
    if results_name:
        p.add_argument("--name", default=results_name, help="results file stem, so that two runs of one "
                                                             "benchmark into one --out folder keep both")
    return p


def resolve_size(args) -> str:
    if args.size:
        return args.size
    import torch

    return "full" if torch.cuda.is_available() else "toy"
