"""Does a path's gradient say it harms? A candidate routing signal, probed on the harm_long demo.

For the short-context student (Llama), the alignment of each training path's last-layer gradient
(the LM head's: sum over tokens of (softmax - onehot) x final hidden state, per character of the
path) with the held-out questions' gradient: ``right`` = the held-out paths whose visible part
states no wrong answer, ``margin`` = right minus those that state a wrong one (the format both
share cancels). One SGD step along a path changes the held-out loss by about -lr x alignment
(TracIn at one checkpoint), so a harmful path should score low. Measured at several points of
plain AdamW SFT (no router, no mutual term) on the questions not held out.

Reads one run of a `qr-ds demo --variant harm_long` output folder: its prepared data, its config's
first student (Llama) as it was before training, and the demo's harmful path ids (the oracle's file). Prints, per
checkpoint, the AUC of "a harmful path scores below a harmless one" and each group's mean score
in standard deviations of all paths' scores.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import base_argparser, claim_results, markdown_table, save_results  # noqa: E402


def batch(enc, idx):
    items = [enc[int(i)] for i in idx]
    T = max(len(e.input_ids) for e in items)
    x = torch.zeros(len(items), T, dtype=torch.long)
    y = torch.full((len(items), T), -100)
    m = torch.zeros(len(items), T, dtype=torch.long)
    for k, e in enumerate(items):
        n = len(e.input_ids)
        x[k, :n], y[k, :n], m[k, :n] = torch.tensor(e.input_ids), torch.tensor(e.labels), 1
    return x, y, m


def head_gradients(model, enc, idx, chars) -> torch.Tensor:
    """[P, V, D]: each path's LM-head gradient of its total nats, per character of the path."""
    out = []
    with torch.no_grad():
        for i in range(0, len(idx), 16):
            x, y, m = batch(enc, idx[i:i + 16])
            o = model(input_ids=x, attention_mask=m, output_hidden_states=True)
            h, p, lab = o.hidden_states[-1][:, :-1], o.logits[:, :-1].softmax(-1), y[:, 1:]
            e = (p - torch.nn.functional.one_hot(lab.clamp(min=0), p.shape[-1]).float()) * (lab != -100)[..., None]
            out.append(torch.einsum("btv,btd->bvd", e, h) / torch.from_numpy(chars[idx[i:i + 16]])[:, None, None])
    return torch.cat(out)


def main() -> None:
    p = base_argparser(__doc__, "probe-gradient-alignment")
    p.add_argument("--run", type=Path, required=True, help="a run folder of `qr-ds demo --variant harm_long`")
    p.add_argument("--steps", default="0,25,75,150", help="SFT steps at which the paths are scored")
    p.add_argument("--holdout", type=float, default=0.1, help="fraction of questions held out (router.gain_holdout's pick)")
    args = p.parse_args()
    claim_results(args)

    from transformers import AutoModelForCausalLM

    import yaml

    from qr_ds.demo import write_oracle_withhold
    from qr_ds.run_layout import RunDir
    from qr_ds.train.data import held_out_questions
    from qr_ds.train.prepared import DONE, Prepared

    run = RunDir(args.run)
    cfg = yaml.safe_load(run.config.read_text())
    done = [f for f in sorted(run.prepared.iterdir()) if (f / DONE).is_file()] if run.prepared.is_dir() else []
    if len(done) != 1:
        raise SystemExit(f"{run.prepared}: expected one prepared folder, found {len(done)} (a run with "
                         "data.prepared_dir elsewhere, or several kept: pass a run that prepared its own)")
    prep = Prepared(done[0])
    harmful = set(write_oracle_withhold(Path(prep.meta["pool"])).read_text().split())
    harm = np.array([i in harmful for i in prep.path_ids()])
    enc, chars = prep.students[0], np.asarray(prep.response_chars).astype(np.float32)
    wrong = np.asarray(enc.cut_wrong) != 0
    seed = cfg["seed"]
    held_q = set(held_out_questions(prep.meta["n_questions"], args.holdout, seed).tolist())
    held = np.array([q in held_q for q in np.asarray(prep.question_index)])
    train, heldout = np.nonzero(~held)[0], np.nonzero(held)[0]
    if not wrong[heldout].any() or wrong[heldout].all():
        raise SystemExit("the held-out paths need both kinds, some showing Llama a wrong answer and some not "
                         "(a harm_long demo run, data.quality_filter on)")
    styles = np.array(prep.meta["styles"])[np.asarray(prep.style)][train]

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(cfg["students"][0]["model"])  # the demo's init, never trained
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)  # the demo's student lr
    g = torch.Generator().manual_seed(seed)
    rows, step = [], 0
    for target in sorted(int(s) for s in args.steps.split(",")):
        while step < target:  # plain SFT on every path of the questions not held out, 8 paths a step
            idx = train[torch.randint(len(train), (8,), generator=g).numpy()]
            x, y, m = batch(enc, idx)
            nats = torch.nn.functional.cross_entropy(model(input_ids=x, attention_mask=m).logits[:, :-1].transpose(1, 2),
                                                     y[:, 1:], reduction="none").sum(1)
            opt.zero_grad()
            (nats / torch.from_numpy(chars[idx])).mean().backward()
            opt.step()
            step += 1
        gh = head_gradients(model, enc, heldout, chars)
        g_right, g_wrong = gh[~wrong[heldout]].mean(0), gh[wrong[heldout]].mean(0)
        gt = head_gradients(model, enc, train, chars)
        right = torch.einsum("pvd,vd->p", gt, g_right).numpy()
        for name, a in (("right", right), ("margin", right - torch.einsum("pvd,vd->p", gt, g_wrong).numpy())):
            h = harm[train]
            row = {"step": step, "signal": name, "auc": float((a[h][:, None] < a[~h][None, :]).mean()),
                   "harmful": float(a[h].mean() / a.std())}
            row.update({f"other {s}": float(a[(styles == s) & ~h].mean() / a.std()) for s in prep.meta["styles"]})
            rows.append(row)
            print(markdown_table([row]) if len(rows) == 1 else "| " + " | ".join(
                f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()) + " |", flush=True)
    path = save_results(args.name, rows, {"run": str(args.run), "seed": seed,
                                          "held_out_paths": int(len(heldout)),
                                          "held_out_wrong": int(wrong[heldout].sum())}, args.out)
    print(f"\n{markdown_table(rows)}\nwrote {path}")


if __name__ == "__main__":
    main()
