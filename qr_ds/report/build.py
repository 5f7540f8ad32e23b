"""The report of one or more training runs: markdown with PNG figures, every number read from the runs.

Inputs: each run folder (``metrics.jsonl``, ``eval.jsonl`` when it evaluated during training,
``config.yaml`` and the final checkpoint's ``router.pt``), ``qr-ds eval`` output folders, and the
filter's retention file. ``report.json`` beside the markdown keeps every number the markdown shows.
"""
from __future__ import annotations

import json
from pathlib import Path

from qr_ds.report import figures
from qr_ds.report.accuracy import (evaluated_checkpoint, correctness, load_eval, paired_tests,
                                   relabelled_table)
from qr_ds.report.retention import load_retention
from qr_ds.report.runs import Run, final_routing, load_run, routing_cells, throughput

ALPHA = 0.05


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def accuracy_section(runs: list[Run], eval_dirs: list[Path]) -> tuple[list[str], dict]:
    """Wilson-interval tables per eval folder, then the first run against each other, paired."""
    from qr_ds.eval.scoring import markdown as accuracy_markdown

    md, tables, answers = ["## Accuracy", ""], [], {run.label: {} for run in runs}
    for ev in map(load_eval, eval_dirs):
        labels = {}
        for run in runs:
            ckpt = evaluated_checkpoint(ev, run.path)
            if ckpt is not None:
                labels[ckpt] = run.label
                answers[run.label].update(correctness(ev, ckpt))
        table = relabelled_table(ev, labels)
        tables.append({"eval": str(ev.path), "tasks": ev.tasks, "checkpoints": labels, "rows": table})
        md += [f"From `{ev.path}` (95% Wilson intervals; per run its final evaluated checkpoint):", "",
               accuracy_markdown(table, ev.tasks), ""]
    students = {run.label: run.students for run in runs}
    tests = paired_tests(runs[0].label, [r.label for r in runs[1:]], answers, students)
    md += paired_markdown(tests, runs[0].label)
    return md, {"tables": tables, "paired_tests": tests}


def paired_markdown(tests: list[dict], base: str) -> list[str]:
    if not tests:
        return ["No paired comparison: no two runs were evaluated on the same test questions.", ""]
    md = [f"### {base} against each other run, on the same test questions", "",
          "McNemar's exact test (two-sided binomial on the questions where exactly one of the two is right) "
          f"and a paired bootstrap 95% interval of the accuracy difference (10,000 resamples of questions). "
          f"Significant means p < {ALPHA}; the {len(tests)} p-values are not corrected for multiple comparisons.", "",
          "| student | task | A | B | n | acc A | acc B | A - B | only A right | only B right | McNemar p | "
          "bootstrap 95% CI of A - B | verdict |", "|" + "---|" * 13]
    for t in tests:
        verdict = "significant" if t["significant"] else "not significant"
        md.append(f"| {t['student']} | {t['task']} | {t['a']} | {t['b']} | {t['n']} | {_pct(t['a_accuracy'])} | "
                  f"{_pct(t['b_accuracy'])} | {_pct(t['difference'])} | {t['only_a_correct']} | "
                  f"{t['only_b_correct']} | {t['mcnemar_p']:.4f} | [{_pct(t['bootstrap_ci95'][0])}, "
                  f"{_pct(t['bootstrap_ci95'][1])}] | {verdict} |")
    md.append("")
    for t in tests:
        if t["significant"]:
            better = t["a"] if t["difference"] > 0 else t["b"]
            md.append(f"- {t['student']}, {t['task']}: **{better}** is more accurate "
                      f"({t['a']} {_pct(t['a_accuracy'])}% vs {t['b']} {_pct(t['b_accuracy'])}%, p = {t['mcnemar_p']:.4f}).")
        else:
            md.append(f"- {t['student']}, {t['task']}: **no significant difference** between {t['a']} and {t['b']} "
                      f"({_pct(t['a_accuracy'])}% vs {_pct(t['b_accuracy'])}%, {t['only_a_correct']} vs "
                      f"{t['only_b_correct']} discordant questions, p = {t['mcnemar_p']:.4f}); these test questions "
                      f"cannot tell the two apart.")
    return md + [""]


def training_section(runs: list[Run], out: Path) -> tuple[list[str], dict]:
    figs = {"loss": figures.plot_losses(runs, out / "loss.png").name}
    md = ["## Training", "", "Losses of every run (faint: per step; bold: moving mean).", "", "![losses](loss.png)", ""]
    if any(run.eval_curve for run in runs):
        figs["eval_curve"] = figures.plot_eval_curve(runs, out / "eval_curve.png").name
        md += ["Accuracy of the checkpoints evaluated during training (`eval.jsonl`).", "", "![eval](eval_curve.png)", ""]
    routed = [run for run in runs if any("router/entropy" in r for r in run.rows)]
    if routed:
        figs["router_training"] = figures.plot_router_training(routed, out / "router_training.png").name
        md += ["Router entropy and routing rates during training (from the Gumbel samples of each batch).", "",
               "![router](router_training.png)", ""]
    return md, figs


def routing_section(runs: list[Run], out: Path) -> tuple[list[str], dict, dict]:
    md, figs, numbers = ["## Routing by the final router", ""], {}, {}
    for run in runs:
        routing = final_routing(run.path)
        if routing is None:
            continue
        slug = run.path.name
        cells = {"style": routing_cells(routing, "styles"), "level": routing_cells(routing, "levels")}
        numbers[run.label] = {"checkpoint": routing["checkpoint"], "pool": routing["pool"], **cells}
        md += [f"### {run.label}", "",
               f"Noise-free P(student gets path) of the router in `{routing['checkpoint']}`, averaged over every "
               f"path the run trained on ({len(routing['styles'])} paths of `{routing['pool']}`); n = paths per cell.", ""]
        for key, what in (("style", "style"), ("level", "question level")):
            if any(cells[key].values()):
                name = f"routing_{key}_{slug}"
                figs[name] = figures.plot_routing_cells(cells[key], out / f"{name}.png",
                                                        f"{run.label}: routing per student and {what}", what).name
                md += [f"![routing per {what}]({name}.png)", ""]
        figs[f"style_loss_{slug}"] = figures.plot_style_loss(run, out / f"style_loss_{slug}.png").name
        md += ["Each student's loss per style over training (nats per character, probes included), to read "
               "beside the routing above.", "", f"![loss per style](style_loss_{slug}.png)", ""]
    if not numbers:
        md += ["No run has a router (or its final checkpoint has no router.pt).", ""]
    return md, figs, numbers


def retention_section(path: Path, out: Path) -> tuple[list[str], dict, dict]:
    ret = load_retention(path)
    figs = {"retention_style": figures.plot_retention([r for r in ret["per_style"] if r["name"] != "all"],
                                                      out / "retention_style.png", "style").name}
    md = ["## Quality filter", "", f"Judged by: **{ret['judged_by']}** (`{path}`).", "",
          "![retention per style](retention_style.png)", "",
          "| style | generated | correct | kept | kept rate |", "|---|---|---|---|---|"]
    md += [f"| {r['name']} | {r['paths']} | {r['correct']} | {r['kept']} | {_pct(r['kept_rate'])}% |"
           for r in ret["per_style"]]
    md.append("")
    if ret["per_level"]:
        figs["retention_level"] = figures.plot_retention(ret["per_level"], out / "retention_level.png", "level").name
        md += [f"Per question level ({ret['level_note']}):", "", "![retention per level](retention_level.png)", "",
               "| level | generated | kept | kept rate |", "|---|---|---|---|"]
        md += [f"| {r['name']} | {r['paths']} | {r['kept']} | {_pct(r['kept_rate'])}% |" for r in ret["per_level"]]
    else:
        md.append(f"No per-level retention: {ret['level_note']}.")
    return md + [""], figs, ret


def throughput_section(runs: list[Run]) -> tuple[list[str], dict]:
    tput = {run.label: throughput(run.rows) for run in runs}
    md = ["## Throughput (measured in these runs)", "",
          "| run | step s | tokens/s | exchange share of step | peak mem GiB (rank 0) |", "|---|---|---|---|---|"]
    md += [f"| {n} | {t['step_s']:.3f} | {t['tokens_per_s']:.0f} | {_pct(t['exchange_share'])}% | "
           f"{t['peak_mem_GiB']:.2f} |" for n, t in tput.items()]
    return md + [""], tput


def build_report(out: Path, runs: dict[str, Path], eval_dirs: list[Path] = (), retention: Path | None = None,
                 notes: list[str] = ()) -> Path:
    """``runs``: label -> run folder, the first one compared against the others."""
    out.mkdir(parents=True, exist_ok=True)
    loaded = [load_run(label, Path(path)) for label, path in runs.items()]
    md = ["# qr_ds run report", ""] + [f"- {n}" for n in notes] + ([""] if notes else [])
    acc_md, accuracy = accuracy_section(loaded, [Path(e) for e in eval_dirs]) if eval_dirs else ([], None)
    train_md, figs = training_section(loaded, out)
    route_md, route_figs, routing = routing_section(loaded, out)
    figs.update(route_figs)
    ret_md, ret = [], None
    if retention is not None:
        ret_md, ret_figs, ret = retention_section(Path(retention), out)
        figs.update(ret_figs)
    tput_md, tput = throughput_section(loaded)
    (out / "report.md").write_text("\n".join(md + acc_md + train_md + route_md + ret_md + tput_md) + "\n")
    (out / "report.json").write_text(json.dumps({
        "runs": {run.label: str(run.path) for run in loaded}, "accuracy": accuracy, "routing": routing,
        "retention": ret, "throughput": tput, "figures": figs, "notes": list(notes)}, indent=1))
    return out / "report.md"
