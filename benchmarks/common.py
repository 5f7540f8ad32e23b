"""Shared benchmark plumbing: machine description, markdown tables, JSON results, optional PNG plots.

Every benchmark prints a markdown table and writes ``benchmarks/results/<name>-<device>.json``
holding the rows and the machine they were measured on. Numbers are only ever measured ones.

Results files are measurements the READMEs cite, so none is replaced silently: right after parsing
its arguments a benchmark calls ``claim_results``, which refuses an existing file before any work
(``--out DIR`` writes elsewhere; ``--overwrite`` replaces it, keeping the old file as
``<file>.replaced-<time>``), and ``save_results`` never writes over a file this run did not claim.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from qr_ds.stages import free_name

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
        "device": device(),
    }
    if info["device"] == "cuda":
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


def device() -> str:
    """The ``<device>`` of results file names: "cuda" where torch sees a GPU, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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


def results_path(name: str, out_dir: Path | None = None) -> Path:
    return Path(out_dir or RESULTS) / f"{name}-{device()}.json"


_OVERWRITE: set[Path] = set()  # results files this run may replace (--overwrite), the old one set aside
_WRITTEN: dict[Path, Path] = {}  # results file -> the file this run wrote (a later save rewrites that one)


def claim_results(args: argparse.Namespace, name: str | None = None) -> Path:
    """Call right after ``parse_args``, before any work: the results file ``save_results`` will write
    (``name`` or ``--name``, in ``--out``). An existing one is refused (SystemExit, one line naming it and
    the ways on) unless ``--overwrite``, which lets ``save_results`` set it aside. Nothing is run for nothing."""
    path = results_path(name or args.name, args.out)
    if path.exists() and not args.overwrite:
        raise SystemExit(f"{Path(sys.argv[0]).name}: {path} exists (results measured earlier); nothing was run. "
                         f"Write elsewhere with --out DIR, or replace it with --overwrite (the old file is kept "
                         f"as {path.name}.replaced-<time>)")
    if args.overwrite:
        _OVERWRITE.add(path.resolve())
    return path


def save_results(name: str, rows: list[dict], extra: dict | None = None, out_dir: Path | None = None) -> Path:
    """Write the results; returns the file written. Called again in one run (benchmarks that save as
    they go), it rewrites this run's file. An existing file is never written over: with ``--overwrite``
    given to ``claim_results`` it is renamed ``<file>.replaced-<time>`` first; otherwise (a file that
    appeared during the run, or a caller that claimed nothing) these results go to ``<stem>.<time>.json``
    beside it, and stderr says so."""
    info = machine()
    target = Path(out_dir or RESULTS) / f"{name}-{info['device']}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"benchmark": name, "machine": info, "rows": rows, **(extra or {})}, indent=1)
    key = target.resolve()
    if key in _WRITTEN:
        path = _WRITTEN[key]
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)  # a run killed mid-write keeps its previous save whole
        return path
    if key in _OVERWRITE and target.exists():
        aside = free_name(target, f"{target.name}.replaced-")
        target.rename(aside)
        print(f"{Path(sys.argv[0]).name}: --overwrite: moved the previous results {target} to {aside}",
              file=sys.stderr)
    path = target
    while True:
        try:
            with path.open("x") as f:  # exclusive: never over a file another run wrote meanwhile
                f.write(text)
            break
        except FileExistsError:
            path = free_name(target, f"{target.stem}.", target.suffix)
    if path != target:
        print(f"{Path(sys.argv[0]).name}: {target} exists and was not claimed with --overwrite: "
              f"wrote these results to {path}", file=sys.stderr)
    _WRITTEN[key] = path
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


def base_argparser(description: str, results_name: str | None = None,
                   size_help: str | None = None) -> argparse.ArgumentParser:
    """The options every benchmark takes; with ``results_name``, also ``--name`` (its default).
    ``size_help``: what ``--size`` means for this benchmark, where not the 7B shapes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--size", choices=["toy", "full"], default=None,
                   help=size_help or "toy: CPU-sized shapes (default without CUDA); full: the 7B shapes "
                                     "(default with CUDA)")
    p.add_argument("--out", type=Path, default=None, help="folder for JSON/PNG (default benchmarks/results)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing results file, keeping the old one as <file>.replaced-<time> "
                        "(without it, an existing file is refused before the benchmark runs)")
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
