"""The run report: markdown with PNG figures, every number read from the run it describes.

Inputs are the training runs' ``metrics.jsonl``, the filter's retention JSON and the evaluation
summary; ``report.json`` keeps the numbers the markdown shows, so a test can check them against
the metrics they came from.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics in {run} (was it trained?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def students_of(rows: list[dict]) -> list[str]:
    return [k.split("/", 1)[1] for k in rows[0] if k.startswith("sft_loss/")]


def routing_table(rows: list[dict], key: str) -> dict[str, dict[str, float]]:
    """Routed / seen over the whole run, per student and per style (or level)."""
    out: dict[str, dict[str, float]] = {}
    for name in students_of(rows):
        hit, seen = defaultdict(int), defaultdict(int)
        for r in rows:
            for v, (h, n) in r.get(f"{key}/{name}", {}).items():
                hit[v] += h
                seen[v] += n
        out[name] = {v: hit[v] / seen[v] for v in sorted(seen)}
    return out


def throughput(rows: list[dict]) -> dict:
    names = students_of(rows)
    tail = rows[1:] or rows  # the first step pays engine warm-up
    step_s = sum(r["step_s"] for r in tail) / len(tail)
    exch = sum(r["exchange_s"] for r in tail) / len(tail)
    return {"step_s": step_s, "tokens_per_s": sum(r["tokens_per_s"] for r in tail) / len(tail),
            "exchange_share": exch / step_s if step_s else 0.0,
            "peak_mem_GiB": max(r["peak_mem_GiB"] for r in rows),
            **{f"tokens_per_s/{n}": sum(r[f"tokens_per_s/{n}"] for r in tail) / len(tail) for n in names}}


def plot_losses(rows: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name in students_of(rows):
        pts = [(r["step"], r[f"sft_loss/{name}"]) for r in rows if r.get(f"sft_loss/{name}") is not None]
        ax.plot(*zip(*pts), label=f"SFT {name}")
    mut = [(r["step"], r["mutual_loss"]) for r in rows]
    if any(v for _, v in mut):
        ax.plot(*zip(*mut), label="mutual", linestyle="--")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.set_title("Training losses")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_heatmap(table: dict[str, dict[str, float]], path: Path, title: str, xlabel: str) -> Path:
    students = list(table)
    cols = sorted({c for v in table.values() for c in v})
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(cols), 1.2 + 0.6 * len(students)))
    data = [[table[s].get(c, float("nan")) for c in cols] for s in students]
    im = ax.imshow(data, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(students)), students)
    for i, row in enumerate(data):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.6 else "k", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_retention(retention: list[dict], path: Path) -> Path:
    rows = [r for r in retention if r["style"] != "all"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    styles = [r["style"] for r in rows]
    ax.bar(styles, [r["paths"] for r in rows], label="generated")
    ax.bar(styles, [r["correct"] for r in rows], label="step 1: correct answer")
    ax.bar(styles, [r["kept"] for r in rows], label="step 2: judge VALID")
    ax.set_ylabel("paths")
    ax.set_title("Quality filter retention per style")
    ax.legend(fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def compare(table: list[dict], task: str, a: str, b: str) -> dict | None:
    """Is method ``a`` better than ``b`` by more than the 95% intervals (non-overlapping)?"""
    rows = {r["method"]: r for r in table}
    if a not in rows or b not in rows or task not in rows[a]["tasks"] or task not in rows[b]["tasks"]:
        return None
    ca, cb = rows[a]["tasks"][task], rows[b]["tasks"][task]
    return {"a": a, "b": b, "a_acc": ca["accuracy"], "b_acc": cb["accuracy"], "a_ci": ca["ci95"],
            "b_ci": cb["ci95"], "beats_by_ci": ca["ci95"][0] > cb["ci95"][1]}


def build_report(out: Path, runs: dict[str, Path], main: str, eval_table: list[dict], tasks: list[str],
                 retention: list[dict] | None, comparisons: list[tuple[str, str]], notes: list[str]) -> Path:
    from qr_ds.eval.scoring import markdown as accuracy_markdown

    out.mkdir(parents=True, exist_ok=True)
    rows = read_metrics(runs[main])
    style_rates = routing_table(rows, "route_rate")
    level_rates = routing_table(rows, "route_rate_level")
    figs = {"loss": plot_losses(rows, out / "loss.png"),
            "routing_style": plot_heatmap(style_rates, out / "routing_style.png",
                                          "Routing rate per student and style (Fig. 4)", "style")}
    if any(level_rates.values()):
        figs["routing_level"] = plot_heatmap(level_rates, out / "routing_level.png",
                                             "Routing rate per question level (Fig. 5)", "level")
    if retention:
        figs["retention"] = plot_retention(retention, out / "retention.png")
    tput = {name: throughput(read_metrics(run)) for name, run in runs.items()}
    verdicts = [v for a, b in comparisons for t in tasks if (v := compare(eval_table, t, a, b))]

    md = ["# qr_ds run report", ""]
    md += [f"- {n}" for n in notes] + [""]
    md += ["## Accuracy (95% Wilson intervals)", "", accuracy_markdown(eval_table, tasks), ""]
    for v in verdicts:
        said = "beats" if v["beats_by_ci"] else "does not beat"
        line = (f"- **{v['a']}** {said} **{v['b']}** by more than the 95% intervals: "
                f"{_pct(v['a_acc'])} [{_pct(v['a_ci'][0])}, {_pct(v['a_ci'][1])}] vs "
                f"{_pct(v['b_acc'])} [{_pct(v['b_ci'][0])}, {_pct(v['b_ci'][1])}].")
        if not v["beats_by_ci"]:
            line += (" Why: both are near the floor, so the intervals overlap; these students have not yet learned "
                     "the task's arithmetic in this run's few minutes of training, and no difference between "
                     "methods can show." if max(v["a_acc"], v["b_acc"]) < 0.1 else
                     " Why: the gap is smaller than the sampling error of this test set; more test questions "
                     "or longer training would be needed to separate them.")
        md.append(line)
    md += ["", "## Training losses", "", f"![losses]({figs['loss'].name})", "",
           "## Routing", "", f"![routing per style]({figs['routing_style'].name})", ""]
    if "routing_level" in figs:
        md += [f"![routing per level]({figs['routing_level'].name})", ""]
    if retention:
        md += ["## Quality filter", "", f"![retention]({figs['retention'].name})", "",
               "| style | generated | correct | kept | kept rate |", "|---|---|---|---|---|"]
        md += [f"| {r['style']} | {r['paths']} | {r['correct']} | {r['kept']} | {_pct(r['kept'] / max(r['paths'], 1))}% |"
               for r in retention]
        md.append("")
    md += ["## Throughput (this machine, measured in these runs)", "",
           "| run | step s | tokens/s | exchange share of step | peak mem GiB (rank 0) |", "|---|---|---|---|---|"]
    md += [f"| {n} | {t['step_s']:.3f} | {t['tokens_per_s']:.0f} | {_pct(t['exchange_share'])}% | {t['peak_mem_GiB']:.2f} |"
           for n, t in tput.items()]
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "report.json").write_text(json.dumps({
        "main": main, "runs": {k: str(v) for k, v in runs.items()}, "routing_style": style_rates,
        "routing_level": level_rates, "throughput": tput, "accuracy": eval_table, "comparisons": verdicts,
        "figures": {k: v.name for k, v in figs.items()}}, indent=1))
    return out / "report.md"
