"""Groups of runs, each the training seeds of one method: checked to differ only in seed and output
folder, with the budget they trained on and their final routers' routing across seeds."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qr_ds.config import flatten, same_value
from qr_ds.report.runs import Run, final_routing, load_run, routing_cells

# the config keys that may differ between the runs of one group: run_name only labels a run in trackers
# (the launcher sets it from each seed's config file, demo: gain_s0, gain_s1, ...)
SEED_KEYS = ("seed", "output_dir", "run_name")


@dataclass
class Group:
    label: str
    runs: list[Run]  # ordered by seed

    @property
    def students(self) -> list[str]:
        return self.runs[0].students

    @property
    def slug(self) -> str:
        """The label as a file-name part: "w/o QF" -> "w_o_qf"."""
        return re.sub(r"[^a-z0-9]+", "_", self.label.lower()).strip("_") or "group"


def load_groups(groups: dict[str, Path | str | list], may_differ: tuple[str, ...] = ()) -> list[Group]:
    """``groups``: label -> run folder, or a list of them (the seeds of one method); the first group
    is the reference every other is compared against. ``may_differ``: config keys the seeds of a group
    may differ in besides seed and output_dir (``students[].model`` when each seed draws its own init)."""
    owner: dict[Path, str] = {}
    out = []
    for label, paths in groups.items():
        paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
        if not paths:
            raise ValueError(f"report: group {label!r} has no run folder")
        for p in paths:
            if not p.is_dir():
                raise FileNotFoundError(f"run folder not found: {p} (group {label!r})")
            if p.resolve() in owner:
                raise ValueError(f"report: run {p} is given twice (groups {owner[p.resolve()]!r} and {label!r})")
            owner[p.resolve()] = label
        runs = sorted((load_run(label, p) for p in paths), key=lambda r: r.seed)
        check_group(label, runs, may_differ)
        if len(runs) > 1:
            for run in runs:
                run.label = f"{label} seed {run.seed}"
        out.append(Group(label, runs))
    slugs = [g.slug for g in out]
    if len(set(slugs)) < len(slugs):
        raise ValueError(f"report: group labels {[g.label for g in out]} give the same figure file names "
                         f"({slugs}); rename one")
    return out


def check_group(label: str, runs: list[Run], may_differ: tuple[str, ...] = ()) -> None:
    """One run per seed, and nothing but seed and output_dir differing (a file's path may, where its
    bytes do not): otherwise the spread between the runs is not training noise of one method."""
    by_seed: dict[object, Run] = {}
    for run in runs:
        if run.seed in by_seed:
            raise ValueError(f"report: group {label!r}: {by_seed[run.seed].path} and {run.path} both have seed "
                             f"{run.seed}; a group holds one run per training seed")
        by_seed[run.seed] = run
    first, allowed = flatten(runs[0].config), set(SEED_KEYS) | set(may_differ)
    for run in runs[1:]:
        other = flatten(run.config)
        keys = sorted(k for k in first.keys() | other.keys()
                      if re.sub(r"\[\d+\]", "[]", k) not in allowed and k not in allowed
                      and not same_value(first.get(k), other.get(k)))
        if keys:
            raise ValueError(f"report: group {label!r}: {run.path} differs from {runs[0].path} in {', '.join(keys)}; "
                             f"the runs of a group may differ only in {', '.join(sorted(allowed))} "
                             "(a key every seed sets on purpose: --may-differ KEY, e.g. students[].model)")


def student_tokens(run: Run, student: str) -> tuple[int | None, str]:
    """Tokens of the paths ``student`` trained on over the run (prompt + response, the forward-only
    probes the router reads not counted), and how they were obtained."""
    last = run.rows[-1]
    if f"tokens_seen/{student}" in last:  # cumulative count, when the trainer logs it
        return int(last[f"tokens_seen/{student}"]), "logged"
    rate, secs = f"tokens_per_s/{student}", f"compute_s/{student}"
    if any(rate not in r or secs not in r for r in run.rows):
        return None, "not logged"
    # the trainer logs tokens / compute_s; times compute_s gives the tokens of the row's micro-step
    per_row = [r[rate] * r[secs] for r in run.rows]
    steps, accum = last["step"], run.config.get("grad_accum", 1)
    if accum == 1 and len(run.rows) == steps:
        return round(sum(per_row)), "summed over every step"
    return round(np.mean(per_row) * steps * accum), (f"estimated from {len(run.rows)} logged micro-steps of "
                                                     f"{steps * accum} (log_every / grad_accum > 1)")


def run_budget(run: Run) -> dict:
    """Optimizer steps (the last logged one: the trainer always logs its final step), teacher paths
    per step (the last step's per-style counts, times grad_accum) and each student's tokens."""
    last, accum = run.rows[-1], run.config.get("grad_accum", 1)
    counts = last.get(f"route_rate/{run.students[0]}") or {}
    tokens = {s: student_tokens(run, s) for s in run.students}
    return {"steps": last["step"], "max_steps": run.config.get("max_steps", 0),
            "paths_per_step": sum(c for _, c in counts.values()) * accum if counts else None,
            "tokens": {s: n for s, (n, _) in tokens.items()}, "tokens_from": {s: how for s, (_, how) in tokens.items()}}


def group_budget(group: Group) -> dict:
    per_run = {run.label: run_budget(run) for run in group.runs}
    tokens = {}
    for s in group.students:
        values = [b["tokens"][s] for b in per_run.values()]
        tokens[s] = None if None in values else {"mean": float(np.mean(values)), "min": min(values), "max": max(values)}
    return {"runs": per_run, "steps": sorted({b["steps"] for b in per_run.values()}),
            "paths_per_step": sorted({b["paths_per_step"] for b in per_run.values()}, key=str), "tokens": tokens}


def budget_flags(budget: dict, reference: dict, ref_label: str) -> list[str]:
    """What makes a group's budget differ from the reference group's, or within the group itself."""
    def show(values: list) -> str:
        return "/".join(map(str, values))

    flags = []
    for key, unit in (("steps", "steps"), ("paths_per_step", "paths per step")):
        if len(budget[key]) > 1:
            flags.append(f"runs differ in {unit}: {show(budget[key])}")
        if budget[key] != reference[key]:
            flags.append(f"unequal budget: {show(budget[key])} vs {show(reference[key])} {unit} ({ref_label})")
    return flags


def across_seeds(cells: list[dict[str, dict[str, dict]]]) -> dict[str, dict[str, dict]]:
    """Per student x value, the mean routing probability over seeds with its spread."""
    out: dict[str, dict[str, dict]] = {}
    for student, values in cells[0].items():
        out[student] = {}
        for value, cell in values.items():
            probs = [c[student][value]["mean_probability"] for c in cells if value in c.get(student, {})]
            out[student][value] = {"mean_probability": float(np.mean(probs)), "paths": cell["paths"],
                                   "seeds": len(probs), "sd": float(np.std(probs, ddof=1)) if len(probs) > 1 else None,
                                   "min": min(probs), "max": max(probs)}
    return out


def group_routing(group: Group, skipped: list[str]) -> dict | None:
    """Each seed's final-router routing per style and level, and their mean and spread; None when no
    run of the group can be shown: its router is off, or each run's routing failed (then ``skipped``
    holds why, run by run). A run whose routing cannot be computed is skipped, and said so."""
    per_run = {}
    for run in group.runs:
        try:
            routing = final_routing(run.path)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            skipped.append(f"routing of {run.label}: {type(e).__name__}: {e}")
            continue
        if routing is not None:
            per_run[run.label] = {"checkpoint": routing["checkpoint"], "pool": routing["pool"],
                                  "style": routing_cells(routing, "styles"), "level": routing_cells(routing, "levels"),
                                  "kept_out": routing["kept_out"]}
    if not per_run:
        return None
    first = next(iter(per_run.values()))
    return {"pool": first["pool"], "paths": sum(c["paths"] for c in next(iter(first["style"].values())).values()),
            "runs": per_run, "style": across_seeds([r["style"] for r in per_run.values()]),
            "level": across_seeds([r["level"] for r in per_run.values()])}
