"""Known-answer routing experiment for the gain signal: students whose held-out loss moves by what they
are trained on (qr_ds/experiments/gain_routing.py), the gain form against its variants and the fit form.

Cases: all_helpful (every style teaches both students: each student's rate must stay >= 0.8, as
w/o Route), harm (one style raises student 0's loss on every other style once it has seen 200 of its
paths: off for student 0 (<= 0.2), everything else on (>= 0.8)), saturation (student 0 has already
learned one style, student 1 has not: that style to student 1 (>= 0.8)). Measurement noise: sd 0.5
of each step's true change (the shipped default), and 1.0 as a stress. The demo's router (hidden 64,
lr 3e-3), 600 steps of 8 paths. Method numbers (seeded), not timings.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import base_argparser, claim_results, markdown_table, save_results  # noqa: E402

from qr_ds.experiments.gain_routing import GainCase, expected, run_gain_case  # noqa: E402
from qr_ds.routing.config import FIT_FORM, GAIN_FORM, RouterConfig  # noqa: E402

FORMS = {
    "gain form (gain + range + logit decay to prior 0.97, evidence scale, floor 2)": GAIN_FORM,
    "gain, no evidence floor (gain_floor 0: z / 2)": {**GAIN_FORM, "gain_floor": 0.0},
    "gain, peak scale (gain_scale: peak)": {**GAIN_FORM, "gain_scale": "peak"},
    "gain, prior 0.9 (the default before)": {**GAIN_FORM, "prior_on": 0.9},
    "gain, decay to 0.5 (no prior)": {**GAIN_FORM, "prior_on": 0.5},
    "gain, no forgetting (gain_forget 1.0)": {**GAIN_FORM, "gain_forget": 1.0},
    "gain, no logit decay": {**GAIN_FORM, "logit_decay": 0.0},
    "fit + rate 0.5": FIT_FORM,
}


def cell(case: str, form: dict, noise: float, seeds: int) -> dict:
    results = [run_gain_case(GainCase(case=case, seed=s, noise=noise), RouterConfig(hidden=64, lr=3e-3, **form))
               for s in range(seeds)]
    want = expected(GainCase(case=case))
    on = [float(torch.tensor(r["p_on"])[want == 1].min()) for r in results]
    off = [float(torch.tensor(r["p_on"])[want == 0].max()) for r in results] if (want == 0).any() else []
    return {"solved": f"{sum(r['solved'] for r in results)}/{seeds}",
            "min P(on) where wanted": round(min(on), 3), "max P(on) where not": round(max(off), 3) if off else "-",
            "min rate": round(min(min(r["rate"]) for r in results), 3),
            "per seed": [{"seed": s, "solved": r["solved"], "p_on": r["p_on"], "rate": r["rate"]}
                         for s, r in enumerate(results)]}


def main() -> None:
    p = base_argparser(__doc__, "known-answer-routing-gain")
    p.add_argument("--seeds", type=int, default=5)
    args = p.parse_args()
    claim_results(args)
    torch.set_num_threads(1)
    rows = []
    for noise in (0.5, 1.0):
        for case in ("all_helpful", "harm", "saturation"):
            for name, form in FORMS.items():
                row = {"case": case, "noise": noise, "form": name, **cell(case, form, noise, args.seeds)}
                rows.append(row)
                print(f"{case} | {noise} | {name} | {row['solved']}", file=sys.stderr, flush=True)
    print(markdown_table(rows, ["case", "noise", "form", "solved", "min P(on) where wanted",
                                "max P(on) where not", "min rate"]))
    print(f"\nwrote {save_results(args.name, rows, {'seeds': args.seeds}, args.out)}")


if __name__ == "__main__":
    main()
