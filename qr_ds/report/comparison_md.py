"""Markdown of the comparison protocol: each group's budget, its accuracy over seeds, and its effect
against the reference group with an interval that says which noise it covers."""
from __future__ import annotations

from qr_ds.report.accuracy import ALPHA
from qr_ds.report.groups import Group
from qr_ds.report.stats import N_BOOT, SEEDS_AND_QUESTIONS


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def count(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


def spread(tokens: dict | None) -> str:
    if tokens is None:
        return "not logged"
    if tokens["min"] == tokens["max"]:
        return count(tokens["mean"])
    return f"{count(tokens['mean'])} ({count(tokens['min'])}-{count(tokens['max'])})"


def pvalue(p: float) -> str:
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def budget_markdown(groups: list[Group], budgets: dict) -> list[str]:
    md = ["## Groups and budgets", "",
          "Primary budget: equal optimizer steps at equal teacher paths per step (every group draws as many "
          "paths and makes as many updates; which paths each student trains on is the method under test). "
          "Beside it, the compute: tokens each student trained on (prompt + response of the paths it took "
          "gradients on; the router's forward-only probes not counted). See docs/comparisons.md.", "",
          "| group | runs: their seeds | optimizer steps | paths per step | tokens trained per student (mean over seeds, "
          "min-max) | budget |", "|---|---|---|---|---|---|"]
    notes = []
    for i, g in enumerate(groups):
        b = budgets[g.label]
        tokens = "; ".join(f"{s} {spread(t)}" for s, t in b["tokens"].items())
        flags = "reference" if i == 0 and not b["flags"] else "**" + "; ".join(b["flags"]) + "**" if b["flags"] else "equal"
        md.append(f"| {g.label} | {len(g.runs)}: {', '.join(str(r.seed) for r in g.runs)} | {'/'.join(map(str, b['steps']))} | "
                  f"{'/'.join(map(str, b['paths_per_step']))} | {tokens} | {flags} |")
        notes += [f"{label}, {s}: tokens {how}." for label, rb in b["runs"].items()
                  for s, how in rb["tokens_from"].items() if how not in ("logged", "summed over every step")]
    single = [g.label for g in groups if len(g.runs) == 1]
    if single:
        notes.append(f"One run in {', '.join(single)}: no training-noise estimate; their comparisons cover the test "
                     f"questions only. Train at least 3 seeds per method (docs/comparisons.md).")
    return md + [""] + [f"- {n}" for n in notes] + ([""] if notes else [])


def group_accuracy_markdown(rows: list[dict]) -> list[str]:
    md = ["### Accuracy per group", "",
          "Each seed's accuracy on the questions every seed of the group answered; mean ± sd over the seeds.", "",
          "| group | student | task | seeds | questions | accuracy % (mean ± sd) | per seed (seed: %) |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        sd = f" ± {pct(r['sd'])}" if r["sd"] is not None else " (one seed)"
        seeds = ", ".join(f"{s}: {pct(a)}" for s, a in r["per_seed"].items())
        md.append(f"| {r['group']} | {r['student']} | {r['task']} | {r['seeds']} | {r['questions']} | "
                  f"{pct(r['mean'])}{sd} | {seeds} |")
    return md + [""]


def verdict(t: dict) -> str:
    if t["noise"] == SEEDS_AND_QUESTIONS:
        return "significant" if t["significant"] else "not significant"
    return "differs on these questions (questions only)" if t["p"] < ALPHA else "no difference on these questions"


def comparison_markdown(tests: list[dict], ref: str) -> list[str]:
    if not tests:
        return ["No comparison: no other group was evaluated on the reference group's test questions.", ""]
    md = [f"### Each group against {ref}", "",
          f"Difference = {ref} − group in accuracy points, with a 95% interval and a two-sided p. *Seeds and "
          f"questions* (both groups with >= 2 seeds): a hierarchical bootstrap ({N_BOOT:,} resamples) draws each "
          f"group's training seeds, independently, then the test questions, the same for both groups; its spread "
          f"is the standard error, and the interval is difference ± t × SE with Welch's degrees of freedom from "
          f"the per-seed accuracies. *Questions only* (a group has one run): the same bootstrap's percentile "
          f"interval, plus McNemar's exact p when both groups are one run; they measure these test questions, not "
          f"the method. Significant means a seeds-and-questions p < {ALPHA}; the {len(tests)} p-values are not "
          f"corrected for multiple comparisons.", "",
          "| student | task | group | seeds (ref/group) | questions | acc ref | acc group | ref − group [95% CI] | "
          "p | noise covered | McNemar p (questions only) | budget | verdict |", "|" + "---|" * 13]
    for t in tests:
        mcnemar = pvalue(t["mcnemar_p"]) if "mcnemar_p" in t else "–"
        md.append(f"| {t['student']} | {t['task']} | {t['b']} | {t['a_seeds']}/{t['b_seeds']} | {t['n']} | "
                  f"{pct(t['a_accuracy'])} | {pct(t['b_accuracy'])} | {pct(t['difference'])} [{pct(t['ci95'][0])}, "
                  f"{pct(t['ci95'][1])}] | {pvalue(t['p'])} | {t['noise']} | {mcnemar} | "
                  f"{'; '.join(t['budget']) or 'equal'} | {verdict(t)} |")
    md.append("")
    for t in tests:
        both = (f"{t['a']} {pct(t['a_accuracy'])}% vs {t['b']} {pct(t['b_accuracy'])}%, difference "
                f"{pct(t['difference'])} [{pct(t['ci95'][0])}, {pct(t['ci95'][1])}], p = {pvalue(t['p'])}")
        budget = f" **{'; '.join(t['budget'])}**: not a like-for-like comparison." if t["budget"] else ""
        head = f"- {t['student']}, {t['task']}:"
        if t["noise"] != SEEDS_AND_QUESTIONS:
            md.append(f"{head} **questions only** ({both}; {t['a_seeds']} and {t['b_seeds']} seeds): this measures "
                      f"the test questions, not the method.{budget}")
        elif t["significant"]:
            better = t["a"] if t["difference"] > 0 else t["b"]
            md.append(f"{head} **{better}** is more accurate ({both}; {t['a_seeds']} and {t['b_seeds']} seeds)."
                      f"{budget}")
        else:
            half = (t["ci95"][1] - t["ci95"][0]) / 2
            md.append(f"{head} **no significant difference** between {t['a']} and {t['b']} ({both}); with "
                      f"{t['a_seeds']} and {t['b_seeds']} seeds the interval's half-width is {pct(half)} points.{budget}")
    return md + [""]
