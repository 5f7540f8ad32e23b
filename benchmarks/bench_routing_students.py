"""Routing with real students, through the DeepSpeed launcher: does the trained router send each
style to the student that is better at it?

Two tiny students of different architectures and tokenizers (Llama + byte-level BPE, Qwen2 +
WordPiece) are first warm-started on different halves of the six styles, so which student models
which style better is a measured fact, not an assumption. QR-Distill then trains both together on
every style (`qr-ds train`, the real launcher, defaults of the shipped router). Afterwards:
- routing per style from the FINAL router's noise-free probabilities over the whole training pool;
- each student's held-out loss per style (nats per character, on paths of unseen questions);
- routing and per-style loss over training (from metrics.jsonl).
Right answer: every style's higher P(on) belongs to the student with the lower held-out loss.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import yaml  # noqa: E402
from common import base_argparser, markdown_table, save_results  # noqa: E402

from qr_ds.data.styles import STYLES  # noqa: E402

HALVES = {0: ("vanilla", "cot", "tot"), 1: ("program", "fact_retrieval", "backward")}  # warm-start styles per student
assert set(STYLES) == {s for half in HALVES.values() for s in half}, "each style warm-starts exactly one student"


def _encode(records, tok, max_len=192):
    from qr_ds.train.data import encode_all

    return encode_all(records, [tok], max_len, 8)[0][0]


def _nats_per_char(lm, tok, records, batch=16) -> torch.Tensor:
    from qr_ds.kernels import causal_lm_loss
    from qr_ds.train.data import collate

    enc = _encode(records, tok)
    out = []
    with torch.no_grad():
        for i in range(0, len(records), batch):
            b = collate(enc[i:i + batch], tok.pad_token_id, "cpu")
            _, per_token, _ = causal_lm_loss(lm, b["input_ids"], b["attention_mask"], b["labels"], use_kernels=False)
            out.append(per_token.view(len(b["labels"]), -1).sum(1))
    chars = torch.tensor([max(len(r.response), 1) for r in records], dtype=torch.float32)
    return torch.cat(out) / chars


def warm_start(model_dir: Path, tok_dir: Path, records, styles, out: Path, steps: int, seed: int) -> Path:
    """Plain SFT of a tiny student on the paths of ``styles`` only; saved like any model folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qr_ds.kernels import causal_lm_loss
    from qr_ds.train.data import collate

    if (out / "config.json").is_file():
        return out
    torch.manual_seed(seed)
    lm, tok = AutoModelForCausalLM.from_pretrained(str(model_dir)), AutoTokenizer.from_pretrained(str(tok_dir))
    enc = _encode([r for r in records if r.style in styles], tok)
    opt = torch.optim.AdamW(lm.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        b = collate([enc[i] for i in torch.randint(len(enc), (8,), generator=g).tolist()], tok.pad_token_id, "cpu")
        loss = causal_lm_loss(lm, b["input_ids"], b["attention_mask"], b["labels"], use_kernels=False)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    lm.save_pretrained(str(out))
    return out


def held_out_pool(work: Path, n_questions: int) -> list:
    """Paths of questions the students never train on (the scripted stand-in teacher, as the demo)."""
    from qr_ds.config import from_dict
    from qr_ds.data.pool import load_pool
    from qr_ds.tasks import write_synthetic
    from qr_ds.teacher.config import GenerateConfig
    from qr_ds.teacher.generate import generate

    questions, pool = work / "data" / "heldout_questions.jsonl", work / "data" / "heldout_pool.jsonl"
    if not pool.is_file():
        write_synthetic(questions, n_questions, seed=7)
        generate(from_dict(GenerateConfig, {"task": "synthetic", "data": str(questions), "out": str(pool),
                                            "teacher": {"backend": "scripted", "sampling": {"seed": 1}}}))
    return [r for r in load_pool(pool).records if r.ok and r.correct is not False]


def over_time(metrics: Path, names: list[str], every: int) -> list[dict]:
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    out = []
    for r in rows:
        if r["step"] % every:
            continue
        entry = {"step": r["step"]}
        for n in names:
            routed = r.get(f"route_rate/{n}", {})
            loss = r.get(f"style_nats_per_char/{n}", {})
            entry[n] = {s: {"routed": routed.get(s), "nats_per_char": loss[s][0] / loss[s][1] if s in loss else None}
                        for s in STYLES}
        out.append(entry)
    return out


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qr_ds.demo import Size, Timings, pipeline_data, students
    from qr_ds.report.runs import final_routing
    from qr_ds.run_layout import RunDir
    from qr_ds.tiny import tokenizer_dir

    p = base_argparser(__doc__)
    p.add_argument("--work", type=Path, default=Path("runs/routing_students"), help="resumable working folder")
    p.add_argument("--questions", type=int, default=100)
    p.add_argument("--warm-steps", type=int, default=150)
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    size = Size(train_questions=args.questions, test_questions=10, samples_per_style=1, epochs=args.epochs,
                max_steps=0, eval_limit=0, max_new_tokens=0)
    pool, _, _, _ = pipeline_data(work, size, Timings(work / "timings.json"))
    from qr_ds.data.pool import load_pool

    train_recs = load_pool(pool).records
    bases = students(work, pool)
    warm = [warm_start(b, tokenizer_dir(b), train_recs, HALVES[i], work / "warm" / b.name, args.warm_steps, i)
            for i, b in enumerate(bases)]
    names = [b.name.split("-")[0] for b in bases]
    run = work / "run"
    cfg = {"students": [{"name": n, "model": str(w), "tokenizer": str(tokenizer_dir(b)), "lr": 1e-3,
                         "finetune": "full", "deepspeed": str(Path(__file__).resolve().parents[1] / "ds_configs/zero2.json")}
                        for n, w, b in zip(names, warm, bases)],
           "data": {"pool": str(pool), "max_len": 192},
           "router": {"hidden": 64, "lr": 3e-3}, "mutual": {"shared_dim": 32, "max_spans": 16},
           "lambda1": 1.0, "lambda2": 0.1, "micro_batch_paths": 8, "epochs": args.epochs, "warmup_steps": 10,
           "seed": 0, "output_dir": str(run), "collective_timeout_s": 120}
    cfg_path = work / "train.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    if RunDir(run).latest() is None:
        env = dict(os.environ, PYTHONSAFEPATH="1", HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu")
        env.pop("TRITON_INTERPRET", None)
        subprocess.run([sys.executable, "-m", "qr_ds", "train", "--config", str(cfg_path)], env=env, check=True)

    routing = final_routing(run)  # the final router over every path the run trained on
    styles, probs = routing["styles"], torch.from_numpy(routing["probabilities"])
    ckpt = RunDir(run).require_latest()
    heldout = held_out_pool(work, 30)
    loss = {}
    for n, b in zip(names, bases):
        lm = AutoModelForCausalLM.from_pretrained(str(ckpt.weights(n, "full")))
        loss[n] = _nats_per_char(lm, AutoTokenizer.from_pretrained(str(tokenizer_dir(b))), heldout)
    rows = []
    for style in STYLES:
        on = [i for i, st in enumerate(styles) if st == style]
        ho = [i for i, r in enumerate(heldout) if r.style == style]
        p_on = probs[on].mean(0).tolist()
        h = [loss[n][ho].mean().item() for n in names]
        row = {"style": style, "paths": len(on), "held-out paths": len(ho)}
        row.update({f"P(on) {n}": v for n, v in zip(names, p_on)})
        row.update({f"held-out nats/char {n}": v for n, v in zip(names, h)})
        row["router prefers"] = names[max(range(len(names)), key=lambda s: p_on[s])]
        row["lower loss"] = names[min(range(len(names)), key=lambda s: h[s])]
        row["agree"] = row["router prefers"] == row["lower loss"]
        rows.append(row)
    print(markdown_table(rows))
    print(f"\nagree on {sum(r['agree'] for r in rows)} of {len(rows)} styles")
    extra = {"warm_start_styles": {names[i]: list(s) for i, s in HALVES.items()}, "checkpoint": str(ckpt.path),
             "over_time": over_time(run / "metrics.jsonl", names, every=10)}
    print(f"wrote {save_results('known-answer-routing-students', rows, extra, args.out)}")


if __name__ == "__main__":
    main()
