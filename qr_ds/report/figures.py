"""The report's figures (matplotlib, Agg): every one drawn from numbers the report's JSON also keeps."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from qr_ds.report.groups import Group  # noqa: E402
from qr_ds.report.runs import binned_style_loss  # noqa: E402

COLORS = plt.get_cmap("tab10").colors


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def smooth(values: list[float]) -> np.ndarray:
    """Moving mean over ~5% of the steps: per-step losses of a few paths are too noisy to compare runs."""
    v = np.asarray(values, dtype=float)
    w = max(1, len(v) // 20)
    return np.convolve(v, np.ones(w) / w, mode="valid") if len(v) > w else v


def _curve(ax, steps: list[float], values: list[float], color, label: str | None, style: str = "-") -> None:
    """Raw values faint, their moving mean on top, so several runs stay distinguishable; ``label``
    None for a group's second and later seeds, so each group is named once in the legend."""
    ax.plot(steps, values, color=color, alpha=0.2, linewidth=0.8, linestyle=style)
    sm = smooth(values)
    ax.plot(steps[len(steps) - len(sm):], sm, color=color, linewidth=1.6, linestyle=style, label=label)


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return ([p[0] for p in pts], [p[1] for p in pts]) if pts else ([], [])


def _seeds(groups: list[Group]):
    """(group color, run, legend label or None) for every run: one color per group, named once."""
    for i, group in enumerate(groups):
        for j, run in enumerate(group.runs):
            yield COLORS[i % 10], run, (group.label if j == 0 else None)


def plot_losses(groups: list[Group], path: Path) -> Path:
    """One panel per student (and one for the mutual loss), every run overlaid in its group's color."""
    runs = [run for g in groups for run in g.runs]
    students = list(dict.fromkeys(s for run in runs for s in run.students))
    mutual = any(r.get("mutual_loss") for run in runs for r in run.rows)
    panels = [(f"SFT loss: {s}", f"sft_loss/{s}") for s in students] + ([("mutual loss", "mutual_loss")] if mutual else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (title, key) in zip(axes[0], panels):
        for color, run, label in _seeds(groups):
            steps, values = _series(run.rows, key)
            if values and (key != "mutual_loss" or any(r.get("mutual_loss") for r in run.rows)):
                _curve(ax, steps, values, color, label)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("nats per token" if key != "mutual_loss" else "loss")
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_eval_curve(groups: list[Group], path: Path) -> Path:
    """Accuracy of the checkpoints evaluated during training, one panel per task (needs at least one
    evaluation with an accuracy; failed ones are not in ``run.eval_curve``)."""
    keys = sorted({k for g in groups for run in g.runs for e in run.eval_curve for k in e["accuracy"]})
    tasks = sorted({k.split("/", 1)[1] for k in keys})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for color, run, label in _seeds(groups):
            for j, key in enumerate(k for k in keys if k.endswith(f"/{task}")):
                pts = sorted((e["step"], e["accuracy"][key]) for e in run.eval_curve if key in e["accuracy"])
                if pts:
                    ax.plot(*zip(*pts), marker="o", markersize=3, color=color, linestyle=["-", "--", ":", "-."][j % 4],
                            label=f"{label} {key.split('/')[0]}" if label else None)
        ax.set_title(f"accuracy during training: {task}")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_router_training(groups: list[Group], path: Path) -> Path:
    """Each student's rate over the router's recent paths (what the rate form holds at its target;
    the entropy for runs of the older forms) and its share of each batch, step by step."""
    fig, (held, rate) = plt.subplots(1, 2, figsize=(10, 3.6))
    for color, run, label in _seeds(groups):
        for j, s in enumerate(run.students):
            style = ["-", "--", ":", "-."][j % 4]
            # by name; runs logged before metrics named students carry the index
            key = f"router/recent_rate/{s}" if any(f"router/recent_rate/{s}" in r for r in run.rows) else \
                f"router/recent_rate/{j}"
            steps, values = _series(run.rows, key)
            if values:
                _curve(held, steps, values, color, f"{label} {s}" if label else None, style)
            steps, values = _series(run.rows, f"routed/{s}")
            if values:
                _curve(rate, steps, values, color, f"{label} {s}" if label else None, style)
        if not any(k.startswith("router/recent_rate/") for row in run.rows for k in row):
            steps, values = _series(run.rows, "router/entropy")
            if values:
                _curve(held, steps, values, color, f"{label} entropy" if label else None)
    held.set_title("rate over the router's recent paths (held at rate_target)")
    held.set_ylim(0, 1.05)
    rate.set_title("share of each batch's paths routed to a student")
    rate.set_ylim(0, 1.05)
    for ax in (held, rate):
        ax.set_xlabel("optimizer step")
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_routing_cells(cells: dict[str, dict[str, dict]], path: Path, title: str, xlabel: str) -> Path:
    """Heatmap of mean P(student gets path) with the number of paths in each cell and, over several
    seeds, the range of the per-seed values."""
    students = list(cells)
    cols = list(dict.fromkeys(c for v in cells.values() for c in v))
    data = np.array([[cells[s][c]["mean_probability"] for c in cols] for s in students])
    fig, ax = plt.subplots(figsize=(2.2 + 1.15 * len(cols), 1.6 + 0.75 * len(students)))
    im = ax.imshow(data, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(students)), students)
    for i, s in enumerate(students):
        for j, c in enumerate(cols):
            cell = cells[s][c]
            spread = f"\n{cell['min']:.2f}-{cell['max']:.2f}" if cell.get("seeds", 1) > 1 else ""
            ax.text(j, i, f"{data[i, j]:.2f}{spread}\nn={cell['paths']}", ha="center", va="center",
                    color="w" if data[i, j] < 0.6 else "k", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.04, label="mean P(routed)")
    return _save(fig, path)


def plot_style_loss(group: Group, path: Path) -> Path:
    """Each student's loss per style over training, pooled over the group's seeds: put beside the
    routing table to see whether a student is routed the styles it learns best."""
    rows = [r for run in group.runs for r in run.rows]
    fig, axes = plt.subplots(1, len(group.students), figsize=(4.6 * len(group.students), 3.6), squeeze=False,
                             sharey=True)
    for ax, student in zip(axes[0], group.students):
        for k, (style, pts) in enumerate(binned_style_loss(rows, student).items()):
            ax.plot(*zip(*pts), marker="o", markersize=3, color=COLORS[k % 10], label=style)
        ax.set_title(f"{group.label}: {student}")
        ax.set_xlabel("optimizer step (binned)")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("nats per character")
    return _save(fig, path)


def plot_retention(rows: list[dict], path: Path, xlabel: str) -> Path:
    """Paths generated, with a correct answer (when known) and kept, per style or level."""
    fig, ax = plt.subplots(figsize=(3.8 + 0.9 * len(rows), 3.6))
    names = [r["name"] for r in rows]
    ax.bar(names, [r["paths"] for r in rows], label="generated")
    if all("correct" in r for r in rows):
        ax.bar(names, [r["correct"] for r in rows], label="step 1: correct answer")
    ax.bar(names, [r["kept"] for r in rows], label="kept (step 2: judge)")
    for i, r in enumerate(rows):
        ax.text(i, r["kept"], f"{100 * r['kept'] / max(r['paths'], 1):.0f}%", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("paths")
    ax.set_xlabel(xlabel)
    ax.set_title(f"Quality filter retention per {xlabel}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: bars fill the axes
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    return _save(fig, path)
