"""Routing with real students, through the DeepSpeed launcher: does the trained router send each
style to the student that is better at it?

Two tiny students of different architectures and tokenizers (Llama + byte-level BPE, Qwen2 +
Qwen2-style BPE) are first warm-started on different halves of the six styles, so which student models
which style better is a measured fact, not an assumption. QR-Distill then trains both together on
every style (`qr-ds train`, the real launcher, the fit router (signal relative, rate 0.5), checkpoints every
``--save-every`` steps). Afterwards:
- routing per style from the FINAL router's noise-free probabilities over the whole training pool,
  both students' P(on) side by side;
- each student's held-out loss per style (nats per character, on paths of unseen questions);
- the same per-style P(on) from every checkpoint's router, and each student's recent rate (the value
  the rate balance holds at its target) from metrics.jsonl, to show routing has settled.
Right answer: every style goes to the student with the lower held-out loss (P(on) >= 0.8) and not
to the other (<= 0.2).
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
from common import base_argparser, claim_results, markdown_table, save_results  # noqa: E402

from qr_ds.data.styles import STYLES  # noqa: E402

HALVES = {0: ("vanilla", "cot", "tot"), 1: ("program", "fact_retrieval", "backward")}  # warm-start styles per student
assert set(STYLES) == {s for half in HALVES.values() for s in half}, "each style warm-starts exactly one student"


def _encode(records, tok, max_len=192):
    from qr_ds.train.encoding import encode_all

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


def routing_by_checkpoint(run: Path, names: list[str]) -> list[dict]:
    """Per-style mean P(on) of every checkpoint's router, oldest first."""
    from qr_ds.report.runs import final_routing
    from qr_ds.run_layout import RunDir

    layout = RunDir(run)
    final = layout.require_latest()
    out = []
    try:  # final_routing reads the checkpoint named by 'latest': point it at each in turn
        for ckpt in layout.complete():
            layout.set_latest(ckpt)
            out.append({"step": ckpt.step, "p_on": per_style_p_on(final_routing(run), names)})
    finally:
        layout.set_latest(final)
    return out


def per_style_p_on(routing: dict, names: list[str]) -> dict[str, dict[str, float]]:
    probs = torch.as_tensor(routing["probabilities"])
    styles = routing["styles"]
    return {style: dict(zip(names, probs[[i for i, st in enumerate(styles) if st == style]].mean(0).tolist()))
            for style in STYLES}


def recent_rates(metrics: Path, names: list[str], every: int) -> list[dict]:
    """Each student's recent rate (noise-free, over the router's recent paths) every ``every`` steps."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [{"step": r["step"], **{n: r.get(f"router/recent_rate/{n}") for n in names}}
            for r in rows if r["step"] % every == 0]


def settled(history: list[dict], names: list[str]) -> float:
    """The largest distance of any style's P(on), at a checkpoint of the run's second half, from the
    final router's: small means routing stopped moving long before the end."""
    final, half = history[-1], history[-1]["step"] / 2
    return max(abs(h["p_on"][st][n] - final["p_on"][st][n])
               for h in history if h["step"] >= half for st in STYLES for n in names)


def verdict(p_better: float, p_other: float) -> str:
    if p_better >= 0.8 and p_other <= 0.2:
        return "to the better student only"
    if p_better >= 0.8:
        return "to both" if p_other >= 0.8 else "mostly to the better student"
    return "prefers the better student" if p_better > p_other else "prefers the worse student"


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qr_ds.demo import Size, Timings, pipeline_data, students
    from qr_ds.report.runs import final_routing
    from qr_ds.run_layout import RunDir
    from qr_ds.tiny import tokenizer_dir

    p = base_argparser(__doc__, "known-answer-routing-students")
    p.add_argument("--work", type=Path, default=Path("runs/routing_students"), help="resumable working folder")
    p.add_argument("--questions", type=int, default=100)
    p.add_argument("--warm-steps", type=int, default=150)
    p.add_argument("--epochs", type=int, default=8, help="enough for routing to settle (checked, see the JSON)")
    p.add_argument("--save-every", type=int, default=25, help="optimizer steps between checkpoints")
    args = p.parse_args()
    claim_results(args)
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
           # the fit form: its known answer is the student with the lower held-out loss per style (the
           # gain signal's answer would be where training helps, which this setup does not plant)
           "router": {"hidden": 64, "lr": 3e-3, "signal": "relative", "entropy": "rate", "logit_decay": 0.0,
                      "prior_on": 0.5},
           "mutual": {"shared_dim": 32, "max_spans": 16},
           "lambda1": 1.0, "lambda2": 0.1, "micro_batch_paths": 8, "epochs": args.epochs, "warmup_steps": 10,
           "seed": 0, "output_dir": str(run), "collective_timeout_s": 120,
           "save_every": args.save_every, "keep_last": 1000}
    cfg_path = work / "train.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    if RunDir(run).latest() is None:
        env = dict(os.environ, PYTHONSAFEPATH="1", HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu")
        env.pop("TRITON_INTERPRET", None)
        subprocess.run([sys.executable, "-m", "qr_ds", "train", "--config", str(cfg_path)], env=env, check=True)

    final = per_style_p_on(final_routing(run), names)  # the final router over every path the run trained on
    ckpt = RunDir(run).require_latest()
    heldout = held_out_pool(work, 30)
    loss = {}
    for n, b in zip(names, bases):
        lm = AutoModelForCausalLM.from_pretrained(str(ckpt.weights(n, "full")))
        loss[n] = _nats_per_char(lm, AutoTokenizer.from_pretrained(str(tokenizer_dir(b))), heldout)
    rows = []
    for style in STYLES:
        ho = [i for i, r in enumerate(heldout) if r.style == style]
        h = {n: loss[n][ho].mean().item() for n in names}
        better = min(names, key=h.get)
        other = next(n for n in names if n != better)
        row = {"style": style, "held-out paths": len(ho)}
        row.update({f"P(on) {n}": final[style][n] for n in names})
        row.update({f"held-out nats/char {n}": h[n] for n in names})
        row["lower loss"] = better
        row["routing"] = verdict(final[style][better], final[style][other])
        rows.append(row)
    print(markdown_table(rows))
    history = routing_by_checkpoint(run, names)
    change = settled(history, names)
    print(f"\nlargest distance of a style's P(on) from the final router's, over the checkpoints from step "
          f"{history[-1]['step'] // 2} on: {change:.3f}")
    extra = {"warm_start_styles": {names[i]: list(s) for i, s in HALVES.items()}, "checkpoint": str(ckpt.path),
             "epochs": args.epochs, "second_half_max_distance_from_final": change, "p_on_by_checkpoint": history,
             "recent_rate": recent_rates(RunDir(run).metrics, names, every=5)}
    print(f"wrote {save_results(args.name, rows, extra, args.out)}")


if __name__ == "__main__":
    main()
