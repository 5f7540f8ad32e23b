"""The report of groups of training runs: markdown with PNG figures, every number read from the runs.

A group is the training seeds of one method; the first group is the reference every other one is
compared against, with intervals that cover training seeds and test questions (docs/comparisons.md).
Inputs: each run folder (``config.yaml``, ``metrics.jsonl``, ``eval.jsonl`` when it evaluated during
training, the final checkpoint's ``router.pt``), ``qr-ds eval`` output folders, and the filter's
retention file. ``report.json`` beside the markdown keeps every number the markdown shows. What
cannot be read (a failed evaluation, a router that does not load) is skipped and listed, not fatal:
in the markdown's "Skipped" section, in report.json, and one line each on stderr (``qr-ds report
--strict`` turns any of them into a failed run).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from qr_ds.report import figures
from qr_ds.report.accuracy import (collect_answers, compare, evaluated_checkpoint, group_accuracy, load_eval,
                                   relabelled_table)
from qr_ds.report.comparison_md import budget_markdown, comparison_markdown, group_accuracy_markdown, pct
from qr_ds.report.groups import Group, budget_flags, group_budget, group_routing, load_groups
from qr_ds.report.retention import load_retention
from qr_ds.report.runs import throughput


def budget_section(groups: list[Group]) -> tuple[list[str], dict]:
    budgets = {g.label: group_budget(g) for g in groups}
    ref = groups[0].label
    for g in groups:
        budgets[g.label]["flags"] = budget_flags(budgets[g.label], budgets[ref], ref)
    return budget_markdown(groups, budgets), budgets


def accuracy_section(groups: list[Group], eval_dirs: list[Path], budgets: dict,
                     skipped: list[str]) -> tuple[list[str], dict]:
    from qr_ds.eval.scoring import markdown as accuracy_markdown

    runs = [run for g in groups for run in g.runs]
    evals = []
    for e in eval_dirs:
        try:
            evals.append(load_eval(e))
        except (OSError, ValueError, KeyError) as err:  # a failed or unfinished eval: the rest still reports
            skipped.append(f"eval folder {e}: {type(err).__name__}: {err}")
    answers = collect_answers(runs, evals, skipped)
    per_group = [row for g in groups for row in group_accuracy(g, answers)]
    tests = [t for g in groups[1:] for t in compare(groups[0], g, answers, budgets[g.label]["flags"])]
    md = ["## Accuracy", ""] + group_accuracy_markdown(per_group) + comparison_markdown(tests, groups[0].label)
    tables = []
    md += ["### Per run", "", "95% Wilson intervals over the questions of each run's final evaluated checkpoint "
           "(question noise only).", ""]
    for ev in evals:
        labels = {}
        for run in runs:
            ckpt = evaluated_checkpoint(ev, run.path)
            if ckpt is not None:
                labels[ckpt] = run.label
        table = relabelled_table(ev, labels)
        tables.append({"eval": str(ev.path), "tasks": ev.tasks, "checkpoints": labels, "rows": table})
        md += [f"From `{ev.path}`:", "", accuracy_markdown(table, ev.tasks), ""] + [f"{n}\n" for n in ev.notes]
    return md, {"groups": per_group, "paired_tests": tests, "tables": tables}


def training_section(groups: list[Group], out: Path, skipped: list[str]) -> tuple[list[str], dict]:
    figs = {"loss": figures.plot_losses(groups, out / "loss.png").name}
    md = ["## Training", "", "Losses of every run, one color per group (faint: per step; bold: moving mean).", "",
          "![losses](loss.png)", ""]
    for run in (r for g in groups for r in g.runs):
        skipped += [f"{run.label}: unreadable line {u}" for u in run.unreadable]
        skipped += [f"evaluation during training of {run.label} at step {e.get('step')}: no accuracy "
                    f"(returncode {e.get('returncode')}; log in {e.get('out')})" for e in run.failed_evals]
    if any(run.eval_curve for g in groups for run in g.runs):
        figs["eval_curve"] = figures.plot_eval_curve(groups, out / "eval_curve.png").name
        md += ["Accuracy of the checkpoints evaluated during training (`eval.jsonl`).", "", "![eval](eval_curve.png)", ""]
    routed = [g for g in groups if any("router/entropy" in r for run in g.runs for r in run.rows)]
    if routed:
        figs["router_training"] = figures.plot_router_training(routed, out / "router_training.png").name
        md += ["Router entropy and routing rates during training (from the Gumbel samples of each batch).", "",
               "![router](router_training.png)", ""]
    return md, figs


def routing_section(groups: list[Group], out: Path, skipped: list[str]) -> tuple[list[str], dict, dict]:
    md, figs, numbers = ["## Routing by the final router", ""], {}, {}
    for group in groups:
        before = len(skipped)
        routing = group_routing(group, skipped)
        if routing is None:
            why = skipped[before:]  # the real reason, not "no router", when routing failed
            md += [f"### {group.label}", "", f"Left out: {'; '.join(why)}" if why
                   else "No router: its runs train with router.enabled: false, or a fixed assignment "
                        "(router.fixed, router.withhold).", ""]
            continue
        numbers[group.label] = routing
        n = len(routing["runs"])
        over = f"mean over {n} seeds, their min-max below it" if n > 1 else "one seed"
        md += [f"### {group.label}", "",
               f"Noise-free P(student gets path) of each seed's final router, averaged over every path the run "
               f"trained on ({routing['paths']} paths of `{routing['pool']}`); {over}; n = paths per cell. "
               f"Per-seed numbers in report.json.", ""] + kept_out_lines(routing["runs"])
        for key, what in (("style", "style"), ("level", "question level")):
            if any(routing[key].values()):
                name = f"routing_{key}_{group.slug}"
                title = f"{group.label}: routing per student and {what}" + (f" (mean of {n} seeds; min-max)" if n > 1 else "")
                figs[name] = figures.plot_routing_cells(routing[key], out / f"{name}.png", title, what).name
                md += [f"![routing per {what}]({name}.png)", ""]
        figs[f"style_loss_{group.slug}"] = figures.plot_style_loss(group, out / f"style_loss_{group.slug}.png").name
        md += ["Each student's loss per style over training (nats per character, probes included, pooled over "
               "the group's seeds), to read beside the routing above.", "",
               f"![loss per style](style_loss_{group.slug}.png)", ""]
    return md, figs, numbers


def kept_out_lines(runs: dict[str, dict]) -> list[str]:
    """What data.drop_cut_wrong kept from each student, per seed: those pairs count at P 0 above (never
    trained on); a run written before the trainer listed them shows the router's P for them."""
    listed = [f"{label}: " + ", ".join(f"{k} of {s}'s paths" for s, k in run["kept_out"].items() if k)
              for label, run in runs.items() if run.get("kept_out") and any(run["kept_out"].values())]
    older = [label for label, run in runs.items() if run.get("kept_out") is None]
    md = []
    if listed:
        md += ["Paths the answer check kept from a student (`data.drop_cut_wrong`: a cut path stating a wrong "
               "answer before its cut) count at P 0 for it, whatever its router said: " + "; ".join(listed) + ".", ""]
    if older:
        md += [f"{', '.join(older)}: written before the trainer listed the paths the answer check keeps from a "
               "student (RUN/kept_from_students.jsonl), so P there is the router's even for such paths.", ""]
    return md


def retention_section(path: Path, out: Path) -> tuple[list[str], dict, dict]:
    ret = load_retention(path)
    figs = {"retention_style": figures.plot_retention([r for r in ret["per_style"] if r["name"] != "all"],
                                                      out / "retention_style.png", "style").name}
    md = ["## Quality filter", "", f"Judged by: **{ret['judged_by']}** (`{path}`).", "",
          "![retention per style](retention_style.png)", "",
          "| style | generated | correct | kept | kept rate |", "|---|---|---|---|---|"]
    md += [f"| {r['name']} | {r['paths']} | {r['correct']} | {r['kept']} | {pct(r['kept_rate'])}% |"
           for r in ret["per_style"]]
    md.append("")
    if ret["per_level"]:
        figs["retention_level"] = figures.plot_retention(ret["per_level"], out / "retention_level.png", "level").name
        md += [f"Per question level ({ret['level_note']}):", "", "![retention per level](retention_level.png)", "",
               "| level | generated | kept | kept rate |", "|---|---|---|---|"]
        md += [f"| {r['name']} | {r['paths']} | {r['kept']} | {pct(r['kept_rate'])}% |" for r in ret["per_level"]]
    else:
        md.append(f"No per-level retention: {ret['level_note']}.")
    return md + [""], figs, ret


def throughput_section(groups: list[Group]) -> tuple[list[str], dict, dict]:
    """Per group, the mean over its seeds of each run's throughput (per run in report.json)."""
    per_run = {run.label: throughput(run.rows) for g in groups for run in g.runs}
    tput = {g.label: {k: float(np.mean([per_run[r.label][k] for r in g.runs])) for k in per_run[g.runs[0].label]}
            for g in groups}
    md = ["## Throughput (measured in these runs; mean over each group's seeds)", "",
          "| group | step s | tokens/s | exchange share of step | peak mem GiB (rank 0) |", "|---|---|---|---|---|"]
    md += [f"| {n} | {t['step_s']:.3f} | {t['tokens_per_s']:.0f} | {pct(t['exchange_share'])}% | "
           f"{t['peak_mem_GiB']:.2f} |" for n, t in tput.items()]
    return md + [""], tput, per_run


# What a section's inputs may fail with (a metrics row without a key, a retention file of another
# shape): that section is left out, with the reason, and the rest of the report still stands.
SECTION_ERRORS = (OSError, ValueError, KeyError, TypeError, ZeroDivisionError)


def guarded(title: str, skipped: list[str], build: Callable[[], tuple], *empty) -> tuple:
    """``build()``, or the section's heading with why it was left out, and ``empty`` for its numbers."""
    try:
        return build()
    except SECTION_ERRORS as e:
        why = f"{title} section: " + (f"a row lacks the key {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}")
        skipped.append(why)
        return ([f"## {title}", "", f"Left out: {why}", ""], *empty)


def say_left_out(line: str) -> None:
    print(f"report: left out: {line}", file=sys.stderr)


def build_report(out: Path, groups: dict[str, Path | list[Path]], eval_dirs: list[Path] = (),
                 retention: Path | None = None, notes: list[str] = (), may_differ: tuple[str, ...] = (),
                 left_out: Callable[[str], None] = say_left_out) -> Path:
    """``groups``: label -> run folder, or a list of run folders (the training seeds of one method);
    the first group is the reference the others are compared against. ``left_out`` is told each thing
    the report had to leave out, and why (by default, one line each on stderr)."""
    out.mkdir(parents=True, exist_ok=True)
    loaded, skipped = load_groups(groups, tuple(may_differ)), []
    notes = list(notes) + ([f"The seeds of each group also differ, on purpose, in: {', '.join(may_differ)}."]
                           if may_differ else [])
    md = ["# qr_ds run report", ""] + [f"- {n}" for n in notes] + ([""] if notes else [])
    budget_md, budgets = budget_section(loaded)
    acc_md, accuracy = accuracy_section(loaded, [Path(e) for e in eval_dirs], budgets, skipped) if eval_dirs else ([], None)
    train_md, figs = guarded("Training", skipped, lambda: training_section(loaded, out, skipped), {})
    route_md, route_figs, routing = routing_section(loaded, out, skipped)
    figs.update(route_figs)
    ret_md, ret = [], None
    if retention is not None:
        ret_md, ret_figs, ret = guarded("Quality filter", skipped, lambda: retention_section(Path(retention), out),
                                        {}, None)
        figs.update(ret_figs)
    tput_md, tput, tput_runs = guarded("Throughput", skipped, lambda: throughput_section(loaded), None, None)
    skip_md = ["## Skipped", ""] + [f"- {s}" for s in skipped] + [""] if skipped else []
    (out / "report.md").write_text("\n".join(md + budget_md + acc_md + train_md + route_md + ret_md + tput_md
                                             + skip_md) + "\n")
    (out / "report.json").write_text(json.dumps({
        "groups": {g.label: {"runs": [str(r.path) for r in g.runs], "seeds": [r.seed for r in g.runs]} for g in loaded},
        "runs": {run.label: str(run.path) for g in loaded for run in g.runs}, "budgets": budgets,
        "accuracy": accuracy, "routing": routing, "retention": ret, "throughput": tput,
        "throughput_per_run": tput_runs, "figures": figs,
        "skipped": skipped, "notes": list(notes)}, indent=1, default=float))
    for line in skipped:
        left_out(line)
    return out / "report.md"
