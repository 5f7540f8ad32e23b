"""When does a harmful path harm? One SGD step of the short-context student on 8 paths of one group,
and the change of its loss (nats per token) on held-out clean quick-style doubling paths, at the
student's random init and after a demo run's training.

Reads a harm-variant demo folder (`qr-ds demo --variant harm --out DIR`): its seed's config, pool,
init students and final checkpoint. Harmful = a path cut at the student's max_len whose visible part
states a wrong answer (`cut_states_wrong_answer`, what `router.gain_heldout: right` leaves out).
The gain critic measures in the first epoch only; if the harm shows only late, it cannot see it.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import base_argparser, claim_results, markdown_table, save_results  # noqa: E402


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from qr_ds.config import load_config
    from qr_ds.data.pool import load_pool
    from qr_ds.run_layout import RunDir
    from qr_ds.train.config import TrainConfig
    from qr_ds.train.data import collate
    from qr_ds.train.encoding import cut_states_wrong_answer, encode_all, select_paths
    from qr_ds.train.student import load_tokenizer

    p = base_argparser(__doc__, "diag-harm-timing")
    p.add_argument("demo", type=Path, help="a `qr-ds demo --variant harm` output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run", default="qr_distill", help="the method whose final checkpoint is 'trained'")
    p.add_argument("--draws", type=int, default=6)
    p.add_argument("--lr", type=float, default=0.05)
    args = p.parse_args()
    claim_results(args)
    torch.set_num_threads(1)

    cfg = load_config(TrainConfig, args.demo / "configs" / f"{args.run}_s{args.seed}.yaml")
    short = min(range(len(cfg.students)), key=cfg.max_len_of)
    tok = load_tokenizer(cfg.students[short])
    recs = select_paths(cfg, load_pool(cfg.data.pool).records)
    enc = encode_all(recs, [tok], [cfg.max_len_of(short)], cfg.mutual.max_spans)[0][0]
    harmful = [i for i, r in enumerate(recs) if cut_states_wrong_answer(r, enc[i].unseen_chars)]
    clean = [i for i, r in enumerate(recs) if r.style in ("vanilla", "cot", "program") and "doubles them" in r.response]
    held = random.Random(0).sample(clean, 24)
    groups = {"harmful": harmful, "clean quick-style doubling": clean,
              "every other path": sorted(set(range(len(recs))) - set(harmful))}
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def loss(model, idx):
        b = collate([enc[i] for i in idx], pad, "cpu")
        return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss

    name = cfg.students[short].name
    models = {"init": cfg.students[short].model,
              "trained": RunDir(Path(cfg.output_dir)).require_latest().path / "students" / name / "model"}
    rows = []
    for when, path in models.items():
        with torch.no_grad():
            before = loss(AutoModelForCausalLM.from_pretrained(path), held).item()
        for group, idx in groups.items():
            changes = []
            for d in range(args.draws):
                model = AutoModelForCausalLM.from_pretrained(path)
                batch = random.Random(d).sample([i for i in idx if i not in held], 8)
                loss(model, batch).backward()
                with torch.no_grad():
                    for w in model.parameters():
                        if w.grad is not None:
                            w -= args.lr * w.grad
                    changes.append(loss(model, held).item() - before)
            rows.append({"student": name, "model": when, "one step on": group, "paths": len(idx),
                         "held-out change (nats/token)": round(sum(changes) / len(changes), 5),
                         "draws above 0": sum(c > 0 for c in changes), "draws": changes})
            print(markdown_table([{k: v for k, v in rows[-1].items() if k != "draws"}]), flush=True)
    print(markdown_table([{k: v for k, v in r.items() if k != "draws"} for r in rows]))
    path = save_results(args.name, rows, {"demo": str(args.demo), "seed": args.seed, "lr": args.lr,
                                          "held_out_paths": len(held)}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
