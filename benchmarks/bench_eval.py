"""Evaluation throughput: the vLLM backend against the transformers backend, same prompts and model.

Greedy generation of the same prompt ids through one LoRA adapter (the eval's common case).
Both backends produce the same tokens (tests/test_eval_parity.py), so generated tokens/s compare
like for like. Engine start / model load is reported apart from generation time.
toy (CPU default): a tiny random Llama built here. full: pass --model DIR and --adapter DIR.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from common import base_argparser, markdown_table, plot_bars, resolve_size, save_results


def build_toy(root: Path) -> tuple[Path, Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from qr_ds.tasks import generate_synthetic
    from qr_ds.tiny import build_tiny_student

    base = build_tiny_student("llama-bpe", root / "base", [e.question for e in generate_synthetic(100, 0)],
                              vocab_size=512, hidden=256, layers=4)
    torch.manual_seed(0)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                          LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(root / "adapter")
    return base, root / "adapter"


def main() -> None:
    p = base_argparser(__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="base model dir (required for --size full)")
    p.add_argument("--adapter", type=Path, help="PEFT LoRA adapter dir (required for --size full)")
    p.add_argument("--prompts", type=int, default=None, help="default: 32 toy, 512 full")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: 32 toy, 256 full")
    p.add_argument("--backends", default="vllm,hf")
    args = p.parse_args()
    size = resolve_size(args)
    n = args.prompts or (32 if size == "toy" else 512)
    new_tokens = args.max_new_tokens or (32 if size == "toy" else 256)
    tmp = tempfile.TemporaryDirectory()
    if size == "full":
        if not (args.model and args.adapter):
            p.error("--size full needs --model and --adapter")
        model, adapter = args.model, args.adapter
    else:
        model, adapter = build_toy(Path(tmp.name))

    from transformers import AutoTokenizer

    from qr_ds.data.format import encode_prompt, render_prompt
    from qr_ds.eval.checkpoints import adapter_rank
    from qr_ds.eval.backends import make_backend
    from qr_ds.eval.generation import Request, new_lora, stop_ids
    from qr_ds.tasks import generate_synthetic, get_task

    tok = AutoTokenizer.from_pretrained(model)
    instruction = get_task("synthetic").instruction
    ids = [encode_prompt(tok, render_prompt(tok, e.question, instruction)) for e in generate_synthetic(n, seed=3)]
    rank = adapter_rank(json.loads((Path(adapter) / "adapter_config.json").read_text()))
    rows = []
    for kind in args.backends.split(","):
        backend = make_backend(kind, dtype="float32" if size == "toy" else "bfloat16", max_model_len=1024,
                               gpu_memory_utilization=0.2 if size == "toy" else 0.8, batch_size=32)
        lora = new_lora("bench", adapter)
        reqs = [Request(x, lora) for x in ids]
        t = time.perf_counter()
        gens = backend.generate(str(model), str(model), reqs, stop_ids(tok, str(model)), new_tokens, rank)
        wall = time.perf_counter() - t
        tokens = sum(len(g.token_ids) for g in gens)
        rows.append({"backend": kind, "prompts": n, "generated_tokens": tokens, "generate_s": backend.generate_s,
                     "load_s": wall - backend.generate_s, "prompts_per_s": n / backend.generate_s,
                     "gen_tokens_per_s": tokens / backend.generate_s})
    print(markdown_table(rows))
    out = save_results(f"bench_eval-{size}", rows, {"model": str(model), "max_new_tokens": new_tokens},
                       out_dir=args.out)
    if args.plot:
        plot_bars(out.with_suffix(".png"), rows, "backend", "gen_tokens_per_s", "eval generation, tokens/s")
    print(f"saved {out}")
    tmp.cleanup()


if __name__ == "__main__":  # vLLM spawns its engine process, which re-imports this module
    main()
