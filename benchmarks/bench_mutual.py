"""Known-answer mutual-loss experiment: a pre-trained and a from-scratch tiny student (Llama + BPE,
Qwen2 + Qwen2-style BPE) train together on co-routed paths, with the shipped anchored form and with eq. 8
as written (qr_ds/experiments/planted_mutual.py). Right answers: competence favours the pre-trained student; the
projected states keep their scale. Method numbers, not timings.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import base_argparser, claim_results, markdown_table, save_results  # noqa: E402

from qr_ds.experiments.planted_mutual import Competence, run_competence  # noqa: E402


def main() -> None:
    p = base_argparser(__doc__, "known-answer-mutual")
    p.add_argument("--steps", type=int, default=300, help="mutual-training steps after pre-training")
    args = p.parse_args()
    claim_results(args)
    torch.set_num_threads(1)
    rows = []
    for form in ("anchored", "paper"):
        r = run_competence(Competence(mutual_steps=args.steps), form)
        rows.append({"form": form, "steps": args.steps,
                     "gamma(pretrained) start": r["gamma_pretrained_start"],
                     "gamma(pretrained) end": r["gamma_pretrained_mean"],
                     "paths favouring pretrained": r["share_paths_favouring_pretrained"],
                     "|z| ratio pretrained": r["z_norm_ratio"][0], "|z| ratio scratch": r["z_norm_ratio"][1],
                     "SFT/token end (pre, scratch)": "/".join(f"{v:.2f}" for v in r["sft_per_token_end"]),
                     "history": r["history"]})
    print(markdown_table(rows, [k for k in rows[0] if k != "history"]))
    print(f"\nwrote {save_results(args.name, rows, {'steps': args.steps}, args.out)}")


if __name__ == "__main__":
    main()
