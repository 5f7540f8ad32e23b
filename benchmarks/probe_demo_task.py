"""Premise probes of the demo task, plain SFT only (no router, no mutual loss), before any QR-Distill run.

Does the synthetic task with the scripted stand-in teacher give each part of the method work?
- filter: SFT on the clean pool beats the unfiltered one (and the answer-checked one), per student,
  on the styles its context holds (the short student: the quick ones) and on all six;
- style x student: one style at a time, the short-context student fails the long styles that the
  long-context one learns (interaction in accuracy over seeds);
- knowledge: each student on the styles its context holds, what it answers that its peer does not;
- curve: clean-pool SFT accuracy against the step budget, to fix the demo's budget;
- harm (a harm variant's --harm-styles): all six styles against leaving out the harm styles or the
  harmful paths alone, each replaced (full batches) and not replaced (weight 0 in the same batches,
  as a router drops a path from the trainer's shared batch).
Accuracy: greedy generation on the demo's 200 test questions, the task's answer extraction.
Runs are cached in --work; --jobs runs go side by side, one thread each.
"""
from __future__ import annotations

import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import base_argparser, claim_results, markdown_table, save_results  # noqa: E402

from qr_ds.experiments import probes  # noqa: E402
from qr_ds.filter.run import STAND_IN  # noqa: E402
from qr_ds.teacher.scripted import MODEL_NAME  # noqa: E402


def main() -> None:
    p = base_argparser(__doc__)
    p.add_argument("--work", type=Path, default=Path("runs/probe_demo_task"))
    p.add_argument("--steps", default="450,600", help="step budgets of the filter, style and knowledge probes "
                                                     "(the demo's first)")
    p.add_argument("--seeds", type=int, default=5, help="seeds of the filter and knowledge probes")
    p.add_argument("--style-seeds", type=int, default=3)
    p.add_argument("--curve", default="150,300,450,600", help="step budgets of the clean-pool curve")
    p.add_argument("--curve-seeds", type=int, default=3)
    p.add_argument("--probes", default="curve,filter,style,knowledge")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--harm-styles", default="", help="the harm variant's styles (the demo's harm: backward; "
                                                     "harm_long: tot,fact_retrieval,backward); with --probes harm, "
                                                     "each student on all six against the forms of leaving these "
                                                     "styles or their harmful paths out (probes.harm_forms). Give each "
                                                     "variant its own --work (runs are cached there by spec)")
    p.add_argument("--harm-kinds", default=",".join(probes.KINDS), help="students of the harm probe")
    args = p.parse_args()
    harm = tuple(s for s in args.harm_styles.split(",") if s)
    harm_kinds = tuple(args.harm_kinds.split(","))
    # one file per harm variant and set of students (the demo's `harm` keeps its first name), so no
    # probe overwrites another's
    results_name = ("known-answer-demo-probes" + ("-harm" if harm else "")
                    + ("-" + "-".join(harm) if harm and harm != ("backward",) else ""))
    results_name += "-" + "-".join(harm_kinds) if harm and harm_kinds != probes.KINDS else ""
    claim_results(args, results_name)
    knobs, work, wanted = probes.Knobs(harm_styles=harm), args.work.resolve(), args.probes.split(",")
    seeds, style_seeds, curve_seeds = list(range(args.seeds)), list(range(args.style_seeds)), list(range(args.curve_seeds))
    steps, budgets = [int(n) for n in args.steps.split(",")], [int(b) for b in args.curve.split(",")]
    specs = {"curve": probes.curve_specs(budgets, curve_seeds),
             "filter": [s for n in steps for s in probes.filter_specs(n, seeds)],
             "style": [s for n in steps for s in probes.style_specs(n, style_seeds)],
             "knowledge": [s for n in steps for s in probes.knowledge_specs(n, seeds)],
             "harm": [s for n in steps for s in probes.harm_specs(n, seeds, harm, harm_kinds)] if harm else []}
    todo = list(dict.fromkeys(s for name in wanted for s in specs[name]))
    data = probes.build_data(work, knobs)  # once, before the workers read it
    with ProcessPoolExecutor(args.jobs) as pool:
        results = dict(zip(todo, pool.map(probes.execute, [work] * len(todo), todo, [knobs] * len(todo))))

    sizes = {name: len(recs) for name, recs in data.pools.items()}
    out, rows = {"teacher": MODEL_NAME, "judge": STAND_IN, "knobs": asdict(knobs), "pool_paths": sizes,
                 "test_questions": len(data.test), "doubling_test_questions": sum(map(probes.doubles, data.test))}, []
    print(f"paths from the {MODEL_NAME}, judged by the {STAND_IN}")
    print(f"pools (paths): {sizes}; test questions: {len(data.test)} ({out['doubling_test_questions']} double)")
    hide = ("acc", "lead", "acc llama", "acc qwen")
    if "curve" in wanted:
        out["curve"] = probes.curve_rows(results, budgets, curve_seeds)
        print(f"\n## clean-pool SFT by step budget ({len(curve_seeds)} seeds)\n")
        print(markdown_table(out["curve"], [c for c in out["curve"][0] if c not in hide]))
    for n in steps:
        rows += report_budget(results, wanted, n, seeds, style_seeds, out.setdefault(f"steps_{n}", {}), hide)
        if "harm" in wanted and harm:
            out[f"steps_{n}"]["harm"] = probes.harm_rows(results, n, seeds, harm, harm_kinds)
            print(f"\n## harm variant: all six styles against all but {'+'.join(harm)}, {n} steps ({len(seeds)} seeds)\n")
            print(markdown_table(out[f"steps_{n}"]["harm"], [c for c in out[f"steps_{n}"]["harm"][-1] if c not in hide + ("gain",)]))
            rows += [{"probe": "harm", "steps": n, **r} for r in out[f"steps_{n}"]["harm"]]
    print(f"\nwrote {save_results(results_name, rows, out, args.out)}")


def report_budget(results, wanted, n, seeds, style_seeds, out, hide) -> list[dict]:
    """Print the filter, style and knowledge tables of one step budget; their rows, tagged."""
    rows = []
    if "filter" in wanted:
        out["filter"] = probes.filter_rows(results, n, seeds)
        print(f"\n## filter: SFT on each pool, {n} steps ({len(seeds)} seeds)\n")
        print(markdown_table(out["filter"], [c for c in out["filter"][0] if c not in hide]))
        rows += [{"probe": "filter", "steps": n, **r} for r in out["filter"]]
    if "style" in wanted:
        out["style"], out["interaction"] = probes.style_rows(results, n, style_seeds)
        print(f"\n## style x student: SFT on one style, clean pool, {n} steps ({len(style_seeds)} seeds)\n")
        print(markdown_table(out["style"], [c for c in out["style"][0] if c not in hide]))
        i = out["interaction"]
        print(f"\ninteraction (qwen - llama on long styles) - (qwen - llama on quick styles): "
              f"{i['mean']:.3f} ± {i['sd']:.3f} over seeds = {i['in_seed_sds']:.1f} seed-SDs")
        rows += [{"probe": "style", "steps": n, **r} for r in out["style"]]
    if "knowledge" in wanted:
        out["knowledge"] = probes.knowledge_rows(results, n, seeds)
        print(f"\n## knowledge: each student on the styles its context holds "
              f"({', '.join(f'{k}: {len(v)} styles' for k, v in probes.STYLES_OF.items())}), "
              f"{n} steps ({len(seeds)} seeds)\n")
        print(markdown_table(out["knowledge"]))
        rows += [{"probe": "knowledge", "steps": n, **r} for r in out["knowledge"]]
    return rows

if __name__ == "__main__":
    main()
