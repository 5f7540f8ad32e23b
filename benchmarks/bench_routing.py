"""Known-answer routing experiment: planted per-style preferences, the shipped router against the
paper's literal form and each of our two changes alone.

Students 0..S-1 each have a loss ``gap`` nats lower on their own group of the six styles
(qr_ds/routing/planted.py). Solved = the noise-free routing sends every style to its student with
P(on) >= 0.8 and to every other student with <= 0.2; with gap 0 (students alike) the students'
shares of the routing must stay equal. Method numbers (seeded), not timings.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import base_argparser, markdown_table, save_results  # noqa: E402

from qr_ds.routing.config import RouterConfig  # noqa: E402
from qr_ds.routing.planted import Planted, run_planted  # noqa: E402

FORMS = {  # name -> (signal, entropy)
    "shipped (relative + load)": ("relative", "load"),
    "paper literal (raw + eq. 3-4)": ("raw", "paper"),
    "relative signal + eq. 3-4": ("relative", "paper"),
    "raw signal + load entropy": ("raw", "load"),
}


def main() -> None:
    p = base_argparser(__doc__)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lambda1", type=float, default=1.0, help="entropy weight (the paper config's 1.0)")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for form, (signal, entropy) in FORMS.items():
        for students in (2, 3):
            for order in ("shuffled", "by_question"):
                for gap in (0.6, 0.2, 0.0):
                    r = run_planted(Planted(n_students=students, gap=gap, batch_order=order, steps=args.steps),
                                    RouterConfig(signal=signal, entropy=entropy), lambda1=args.lambda1)
                    pref = [row[int(k * students // 6)] for k, row in enumerate(r["p_on"])]
                    other = [v for k, row in enumerate(r["p_on"]) for s, v in enumerate(row)
                             if s != int(k * students // 6)]
                    rows.append({"form": form, "S": students, "batches": order, "gap": gap,
                                 "solved": r["solved"] if gap else "-",
                                 "steps to solve": r["first_solved_step"] or "-",
                                 "min P(on) preferred": min(pref) if gap else "-",
                                 "max P(on) other": max(other) if gap else "-",
                                 "shares": "/".join(f"{x:.2f}" for x in r["student_share"]),
                                 "min rate": min(r["rate"]), "p_on": r["p_on"]})
    columns = ["form", "S", "batches", "gap", "solved", "steps to solve", "min P(on) preferred",
               "max P(on) other", "shares", "min rate"]
    print(markdown_table(rows, columns))
    path = save_results("known-answer-routing", rows, {"steps": args.steps, "lambda1": args.lambda1}, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
