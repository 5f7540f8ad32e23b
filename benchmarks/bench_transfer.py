"""Peer teaching (qr_ds/experiments/transfer.py): does the mutual term lower a student's held-out loss
on the half of the styles (X) that only its peer trained on? B = tiny Qwen2 + Qwen2-style BPE, trained on
Y only; A = tiny Llama + byte-level BPE, trained on X and Y. Every arm of a seed starts from the same
warm-started students and trains the same steps on the same batches; mean ± sd over seeds, and the
paired difference from "mutual off". Method numbers, not timings.
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import base_argparser, claim_results, markdown_table, save_results  # noqa: E402

from qr_ds.experiments.transfer import Arm, Transfer, mutual_gradient_on_x, prepare, run_arm  # noqa: E402

B, A = "qwen-bpe", "llama-bpe"
LEVELS = {  # column: (student, key), mean ± sd over seeds
    "B X nats/char": (B, "nats_per_char_X"),
    "B X token acc": (B, "token_accuracy_X"),
    "B Y nats/char": (B, "nats_per_char_Y"),
    "A X nats/char": (A, "nats_per_char_X"),
}
PAIRED = {  # column: (student, key), minus "mutual off" of the same seed
    "B X nats/char minus off": (B, "nats_per_char_X"),
    "B X nats/token minus off, tokens B emits on Y": (B, "X_nats_per_token_seen"),
    "B X nats/token minus off, tokens only X uses": (B, "X_nats_per_token_unseen"),
    "B Y nats/char minus off": (B, "nats_per_char_Y"),
}


def arms(lambdas: list[float], head_lrs: list[float]) -> list[Arm]:
    out = [Arm(), Arm(b_trains_on_x=True)]
    for form in ("anchored", "paper"):
        out += [Arm(where, form, lam) for where in ("co-routed", "all") for lam in lambdas]
        out += [Arm("all", form, lam, peer_knows_x=False) for lam in lambdas]
        out += [Arm("all", form, 1.0, head_lr=h) for h in head_lrs]
    return out


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def table(runs: list[dict], seeds: list[int]) -> list[dict]:
    by = {(r["label"], r["seed"]): r for r in runs}
    off = {s: by[("mutual off", s)]["students"] for s in seeds}
    rows = []
    for label in dict.fromkeys(r["label"] for r in runs):
        per = [by[(label, s)] for s in seeds]
        row = {"arm": label, "steps": per[0]["steps"], "seeds": len(seeds)}
        for col, (st, key) in LEVELS.items():
            row[col] = mean_sd([r["students"][st][key] for r in per])
        for col, (st, key) in PAIRED.items():
            row[col] = mean_sd([r["students"][st][key] - off[r["seed"]][st][key] for r in per])
        if "mutual_loss_first_last" in per[0]:
            row["mutual loss first/last tenth"] = "/".join(
                f"{statistics.mean(r['mutual_loss_first_last'][i] for r in per):.3f}" for i in (0, 1))
        rows.append(row)
    return rows


def main() -> None:
    p = base_argparser(__doc__, "known-answer-transfer")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=200, help="joint-training steps, the same in every arm")
    p.add_argument("--warm-steps", type=int, default=200)
    p.add_argument("--lambdas", type=float, nargs="+", default=[0.1, 1.0, 10.0])
    p.add_argument("--head-lrs", type=float, nargs="*", default=[1e-4, 1e-2], help="besides the default 1e-3")
    args = p.parse_args()
    claim_results(args)
    torch.set_num_threads(1)
    seeds = list(range(args.seeds))
    runs, gradients = [], []
    for seed in seeds:
        setup = prepare(Transfer(seed=seed, steps=args.steps, warm_steps=args.warm_steps))
        for form in ("anchored", "paper"):
            for where in ("co-routed", "all"):
                gradients.append({"seed": seed, "form": form, "mutual on": where,
                                  **mutual_gradient_on_x(setup, Arm(where, form))})
        for arm in arms(args.lambdas, args.head_lrs):
            runs.append(run_arm(setup, arm))
            print(f"seed {seed}: {arm.label}: B X nats/char "
                  f"{runs[-1]['students']['qwen-bpe']['nats_per_char_X']:.3f}", flush=True)
    rows = table(runs, seeds)
    print(markdown_table(rows, list(dict.fromkeys(k for r in rows for k in r))))
    print("\nGradient of the mutual term alone on B, on a batch of X paths (norms, seed 0):")
    print(markdown_table([g for g in gradients if g["seed"] == 0]))
    extra = {"setup": vars(args) | {"out": None}, "x_styles": "program, fact_retrieval, backward",
             "gradients_on_x": gradients, "runs": runs}
    print(f"\nwrote {save_results(args.name, rows, extra, args.out)}")


if __name__ == "__main__":
    main()
