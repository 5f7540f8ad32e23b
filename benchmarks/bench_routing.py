"""Known-answer routing experiment: planted per-style preferences whose gap moves during the run,
the fit signal held at a rate (the default until issue 30) against the paper's literal form and the
load entropy, at 8 and 32 paths per step and 2 or 3 students.

Students 0..S-1 each have a lower loss on their own group of the six styles
(qr_ds/experiments/planted_routing.py). Cases: converging (a 0.6-nat gap shrinks to 0 by step 400), a constant
0.1-nat gap, students that learn what they are routed (a 0.2-nat head start, then each student's
loss on a style falls with the paths of it routed to it), and students alike (gap 0). Solved = the
noise-free routing sends every style to its student with P(on) >= 0.8 and to every other student
with <= 0.2. The rate is each student's mean noise-free P(on) over the pool, checked every 25 steps;
after warm-up it should stay within 0.1 of the target. The demo's router (hidden 64, lr 3e-3).
Method numbers (seeded), not timings.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import base_argparser, claim_results, markdown_table, save_results  # noqa: E402

from qr_ds.routing.config import RouterConfig  # noqa: E402
from qr_ds.experiments.planted_routing import Planted, preferred_and_other, rate_range, run_planted  # noqa: E402

CASES = {  # name -> Planted fields
    "converging (0.6 -> 0 by step 400)": {"case": "converging", "gap": 0.6},
    "constant gap 0.1": {"case": "constant", "gap": 0.1},
    "students learn what they are routed (0.2 head start)": {"case": "learning", "gap": 0.2},
    "students alike (gap 0)": {"case": "constant", "gap": 0.0},
}
# These are fit cases (losses that differ, not losses that move by what is trained): their known answers
# belong to the fit signal. The gain signal's own cases are benchmarks/bench_routing_gain.py.
FIT = {"signal": "relative", "logit_decay": 0.0, "prior_on": 0.5}  # the router starts undecided
FORMS = {  # name -> RouterConfig fields beyond the demo's hidden/lr
    "fit + rate (the default until issue 30)": {**FIT, "entropy": "rate"},
    "rate on the batch alone (rate_window 0)": {**FIT, "entropy": "rate", "rate_window": 0},
    "fit + load": {**FIT, "entropy": "load"},
    "paper literal (raw + eq. 3-4)": {"signal": "raw", "entropy": "paper", "logit_decay": 0.0, "prior_on": 0.5},
}
WARMUP = 100  # steps before the rate must hold


def targets(form: str, students: int) -> list[float | None]:
    """Rate targets to run: exclusive routing has rate 1/S, so S=3 runs at 1/3 and at the default 0.5."""
    if "rate" not in form:
        return [None]
    return [0.5] if students == 2 else [1 / 3, 0.5]


def run_cell(case: dict, form: dict, students: int, batch: int, target: float | None, seeds: int,
             steps: int, lambda1: float) -> dict:
    router = RouterConfig(hidden=64, lr=3e-3, **form, **({"rate_target": target} if target else {}))
    results = []
    for seed in range(seeds):
        p = Planted(n_students=students, batch_paths=batch, steps=steps, seed=seed, **case)
        results.append((p, run_planted(p, router, lambda1=lambda1)))
    ranges = [rate_range(r, WARMUP) for _, r in results]
    worst = [preferred_and_other(r["p_on"], p) for p, r in results]
    has_gap = case["gap"] > 0
    return {
        "solved at end": f"{sum(r['solved'] for _, r in results)}/{seeds}" if has_gap else "-",
        "steps to solve": "/".join(str(r["first_solved_step"] or "-") for _, r in results) if has_gap else "-",
        "min P(on) preferred": min(w[0] for w in worst) if has_gap else "-",
        "max P(on) other": max(w[1] for w in worst) if has_gap else "-",
        "rate after warm-up": f"{min(lo for lo, _ in ranges):.2f}-{max(hi for _, hi in ranges):.2f}",
        "rate within 0.1": (all(abs(lo - target) <= 0.1 and abs(hi - target) <= 0.1 for lo, hi in ranges)
                            if target else "-"),
        "min rate": min(lo for lo, _ in ranges),
        "shares": "/".join(f"{x:.2f}" for x in results[0][1]["student_share"]),
        "seeds": seeds,
        "p_on": [[round(v, 4) for v in row] for row in results[0][1]["p_on"]],  # seed 0, final
        "per seed": [{"seed": p.seed, "solved": r["solved"], "first_solved_step": r["first_solved_step"],
                      "rate after warm-up": [round(lo, 4), round(hi, 4)]}
                     for (p, r), (lo, hi) in zip(results, ranges)],
    }


def main() -> None:
    p = base_argparser(__doc__, "known-answer-routing")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--lambda1", type=float, default=1.0, help="balance weight (our configs' 1.0; the paper gives none)")
    args = p.parse_args()
    claim_results(args)
    torch.set_num_threads(1)
    rows = []
    for case_name, case in CASES.items():
        for batch in (8, 32):
            for students in (2, 3):
                for form_name, form in FORMS.items():
                    for target in targets(form_name, students):
                        row = {"case": case_name, "batch": batch, "S": students, "form": form_name,
                               "rate target": round(target, 3) if target else "-"}
                        row.update(run_cell(case, form, students, batch, target, args.seeds, args.steps,
                                            args.lambda1))
                        rows.append(row)
                        print(f"{case_name} | {batch} | {students} | {form_name} | {row['rate target']} | "
                              f"{row['steps to solve']} | {row['rate after warm-up']}", file=sys.stderr, flush=True)
    columns = ["case", "batch", "S", "form", "rate target", "solved at end", "steps to solve",
               "min P(on) preferred", "max P(on) other", "rate after warm-up", "rate within 0.1", "seeds"]
    print(markdown_table(rows, columns))
    extra = {"steps": args.steps, "lambda1": args.lambda1, "warmup_steps": WARMUP, "record_every": 25,
             "router": {"hidden": 64, "lr": 3e-3}}
    print(f"\nwrote {save_results(args.name, rows, extra, args.out)}")


if __name__ == "__main__":
    main()
