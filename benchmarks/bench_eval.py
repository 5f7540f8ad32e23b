"""Evaluation throughput: the vLLM backend against the transformers backend, same prompts and model.

Greedy generation of the same prompt ids through one LoRA adapter (the eval's common case).
Both backends produce the same tokens (tests/test_eval_parity.py), so generated tokens/s compare
like for like. Engine start / model load is reported apart from generation time.
toy (CPU default): a tiny random Llama built here. full: pass --model DIR and --adapter DIR.
--pair: the real small pair's shapes (benchmarks/gpu/pair.py), each with a random LoRA adapter.
Where vLLM does not import, its rows say why and the transformers backend is still measured;
where both ran, greedy_parity is the share of prompts whose generated ids are identical.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Iterator

from common import base_argparser, claim_results, markdown_table, plot_bars, resolve_size, save_results


def random_adapter(base: Path, out: Path) -> Path:
    """A LoRA adapter with random (not zero) B, so the adapted model differs from its base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                          LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(out)
    return out


def corpus() -> list[str]:
    from qr_ds.tasks import generate_synthetic

    return [e.question for e in generate_synthetic(100, 0)]


def models_to_eval(args, size: str, root: Path) -> Iterator[dict]:
    """name, base model, tokenizer, adapter and weights of each model to evaluate, built when its turn comes."""
    if args.pair:
        from gpu.pair import PAIR, student_dir

        for name in PAIR:
            dtype = "bfloat16" if size == "full" else "float32"
            model, tokenizer, weights = student_dir(name, size, root, corpus(), dtype)
            yield {"name": name, "model": model, "tokenizer": tokenizer, "weights": weights,
                   "adapter": random_adapter(model, root / f"{name}-adapter")}
    elif size == "full":
        yield {"name": args.model.name, "model": args.model, "tokenizer": args.model, "adapter": args.adapter,
               "weights": "given"}
    else:
        from qr_ds.tiny import build_tiny_student

        base = build_tiny_student("llama-bpe", root / "base", corpus(), vocab_size=512, hidden=256, layers=4)
        yield {"name": "tiny-llama", "model": base, "tokenizer": base, "weights": "tiny random",
               "adapter": random_adapter(base, root / "adapter")}


def unavailable(backend: str) -> str | None:
    """Why ``backend`` cannot run here, or None."""
    if backend != "vllm":
        return None
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        return f"vllm does not import here: {e}"
    return None


def main() -> None:
    p = base_argparser(__doc__.splitlines()[0], "bench_eval")
    p.add_argument("--model", type=Path, help="base model dir (--size full without --pair)")
    p.add_argument("--adapter", type=Path, help="PEFT LoRA adapter dir (--size full without --pair)")
    p.add_argument("--pair", action="store_true", help="the real small pair's shapes, random weights and adapters")
    p.add_argument("--prompts", type=int, default=None, help="default: 32 toy, 512 full")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: 32 toy, 256 full")
    p.add_argument("--backends", default="vllm,hf")
    args = p.parse_args()
    claim_results(args)
    size = resolve_size(args)
    n = args.prompts or (32 if size == "toy" else 512)
    new_tokens = args.max_new_tokens or (32 if size == "toy" else 256)
    if size == "full" and not args.pair and not (args.model and args.adapter):
        p.error("--size full needs --model and --adapter, or --pair")
    tmp = tempfile.TemporaryDirectory()
    rows = []

    def save(complete: bool):  # after every model: a run killed by its time limit keeps what it measured
        return save_results(args.name, rows, {"size": size, "max_new_tokens": new_tokens, "complete": complete},
                            out_dir=args.out)

    for m in models_to_eval(args, size, Path(tmp.name)):
        rows += eval_model(m, args.backends.split(","), size, n, new_tokens)
        save(False)
    print(markdown_table(rows))
    out = save(True)
    if args.plot:
        measured = [r for r in rows if "gen_tokens_per_s" in r]
        plot_bars(out.with_suffix(".png"), measured, "backend", "gen_tokens_per_s", "eval generation, tokens/s")
    print(f"saved {out}")
    tmp.cleanup()


def eval_model(m: dict, backends: list[str], size: str, n: int, new_tokens: int) -> list[dict]:
    """One row per backend (a skipped one says why), then greedy parity where two backends ran."""
    from transformers import AutoTokenizer

    from qr_ds.data.format import encode_prompt, render_prompt
    from qr_ds.eval.backends import make_backend
    from qr_ds.eval.checkpoints import adapter_rank
    from qr_ds.eval.generation import Request, new_lora, stop_ids
    from qr_ds.tasks import generate_synthetic, get_task

    tok = AutoTokenizer.from_pretrained(m["tokenizer"])
    instruction = get_task("synthetic").instruction
    ids = [encode_prompt(tok, render_prompt(tok, e.question, instruction)) for e in generate_synthetic(n, seed=3)]
    rank = adapter_rank(json.loads((Path(m["adapter"]) / "adapter_config.json").read_text()))
    rows, outputs = [], {}
    for kind in backends:
        head = {"model": m["name"], "weights": m["weights"], "backend": kind, "prompts": n}
        why = unavailable(kind)
        if why:
            rows.append({**head, "skipped": why})
            continue
        backend = make_backend(kind, dtype="float32" if size == "toy" else "bfloat16", max_model_len=1024,
                               gpu_memory_utilization=0.2 if size == "toy" else 0.8, batch_size=32)
        reqs = [Request(x, new_lora("bench", m["adapter"])) for x in ids]
        t = time.perf_counter()
        gens = backend.generate(str(m["model"]), str(m["tokenizer"]), reqs, stop_ids(tok, str(m["tokenizer"])),
                                new_tokens, rank)
        wall = time.perf_counter() - t
        tokens = sum(len(g.token_ids) for g in gens)
        outputs[kind] = [list(g.token_ids) for g in gens]
        rows.append({**head, "generated_tokens": tokens, "generate_s": backend.generate_s,
                     "load_s": wall - backend.generate_s, "prompts_per_s": n / backend.generate_s,
                     "gen_tokens_per_s": tokens / backend.generate_s})
    if len(outputs) >= 2:
        (a, ga), (b, gb) = list(outputs.items())[:2]
        rows.append({"model": m["name"], "weights": m["weights"], "backend": f"greedy parity {a} vs {b}",
                     "prompts": n, "greedy_parity": sum(x == y for x, y in zip(ga, gb)) / n})
    return rows


if __name__ == "__main__":  # vLLM spawns its engine process, which re-imports this module
    main()
