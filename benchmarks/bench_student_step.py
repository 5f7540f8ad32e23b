"""Student step throughput: tokens/s, peak memory and MFU of one LoRA(/QLoRA) fine-tuning step.

Variants, all LoRA r=32 on the 7 linear projections, AdamW, random weights:
  plain        transformers + peft, full gradient checkpointing, model(labels=...).loss (the baseline)
  qr_ds        causal_lm_loss with the fused linear+CE kernel, no checkpointing (speed mode)
  qr_ds-mem    the same with selective checkpointing of a fraction of the layers (memory-saving mode)
  qr_ds-nokern causal_lm_loss without kernels (lm_head logits + F.cross_entropy), no checkpointing
"ours" runs the trainer's own Student module (qr_ds.train.student) with per-token weights as the
trainer builds them. Models: mistral and gemma (7B shapes), smollm2 and gemma3 (the real small pair's
shapes: SmolLM2-135M-Instruct, Gemma-3-270M), all with random weights.
GPU only: nf4 QLoRA via bitsandbytes (as /work/shared/tools/gpu_baseline.py), CUDA timing, peak
memory and MFU; the full shapes with batch 8 x 768. On CPU: plain fp32 LoRA at toy size.
"""
from __future__ import annotations

import time

import torch
from torch import nn
from tqdm import tqdm

from common import base_argparser, claim_results, markdown_table, plot_bars, resolve_size, save_results
from qr_ds.kernels import selective_checkpointing
from qr_ds.train.student import Student

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_R = 32
H100_BF16_FLOPS = 989e12  # dense bf16 peak of an H100 SXM, the MFU denominator
FLOPS_FORMULA = (
    "useful FLOPs/token = 4*N_frozen + 6*N_lora + 6*L*T*d_attn. N_frozen: weights in matmuls "
    "(7 projections/layer + lm_head V*H; embedding lookups excluded): forward 2N + input-grad 2N, no weight "
    "grad. LoRA A,B: forward, input-grad and weight-grad 2N each. Attention (causal, halved): QK^T and AV "
    "forward 2*T*d_attn per layer, backward twice that. Recomputation by checkpointing is not useful work. "
    "MFU = tokens/s * FLOPs/token / 989e12 (H100 bf16 dense)."
)

SHAPES = {
    "full": {
        "mistral": dict(kind="llama", vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=8, head_dim=128),
        "gemma": dict(kind="gemma", vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                      num_attention_heads=16, num_key_value_heads=16, head_dim=256),
        # the real small pair's published configs (SmolLM2-135M-Instruct, Gemma-3-270M)
        "smollm2": dict(kind="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                        num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True),
        "gemma3": dict(kind="gemma3", vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                       num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
                       query_pre_attn_scalar=256),
    },
    "toy": {  # same ratios that matter (GQA for mistral, big vocab/hidden for gemma), CPU-sized
        "mistral": dict(kind="llama", vocab_size=2048, hidden_size=128, intermediate_size=448, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=32),
        "gemma": dict(kind="gemma", vocab_size=16384, hidden_size=96, intermediate_size=768, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=48),
        # head_dim 64: vLLM's CPU attention refuses smaller heads (the eval rehearsal serves these)
        "smollm2": dict(kind="llama", vocab_size=4096, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=64, tie_word_embeddings=True),
        "gemma3": dict(kind="gemma3", vocab_size=16384, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=64, sliding_window=32,
                       query_pre_attn_scalar=64),
    },
}
# shape kind -> (transformers config class, model class)
ARCHITECTURES = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "gemma": ("GemmaConfig", "GemmaForCausalLM"),
                 "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM")}
BATCH = {"full": (8, 768), "toy": (2, 64)}
VARIANTS = ["plain", "qr_ds", "qr_ds-mem", "qr_ds-nokern"]


def random_model(shape: dict, device: str, dtype: torch.dtype, **config_extra) -> nn.Module:
    """A causal LM of ``shape`` with random weights (seed 0), built on ``device``."""
    import transformers

    shape = dict(shape)
    config_name, model_name = ARCHITECTURES[shape.pop("kind")]
    config = getattr(transformers, config_name)(**shape, max_position_embeddings=4096, **config_extra)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        return getattr(transformers, model_name)(config).to(dtype)


def build(shape: dict, device: str, nf4: bool) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    # training: no KV cache (and no warning when checkpointing)
    model = random_model(shape, device, torch.bfloat16 if device == "cuda" else torch.float32, use_cache=False)
    if nf4:
        quantize_nf4(model)
    for p in model.parameters():
        p.requires_grad_(False)
    lora = LoraConfig(r=LORA_R, lora_alpha=2 * LORA_R, target_modules=TARGETS, lora_dropout=0.0, task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def quantize_nf4(module: nn.Module) -> None:
    """GPU only: swap every Linear but lm_head for a bitsandbytes nf4 Linear4bit (QLoRA storage)."""
    import bitsandbytes as bnb

    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear) and name != "lm_head":
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                  compute_dtype=torch.bfloat16, quant_type="nf4", compress_statistics=True)
            q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4", compress_statistics=True)
            setattr(module, name, q.cuda())
        else:
            quantize_nf4(child)


def flops_per_token(shape: dict, seq: int) -> float:
    H, L, V, I = shape["hidden_size"], shape["num_hidden_layers"], shape["vocab_size"], shape["intermediate_size"]
    d_q = shape["num_attention_heads"] * shape["head_dim"]
    d_kv = shape["num_key_value_heads"] * shape["head_dim"]
    frozen = L * (2 * H * d_q + 2 * H * d_kv + 3 * H * I) + V * H
    io = [(H, d_q), (H, d_kv), (H, d_kv), (d_q, H), (H, I), (H, I), (I, H)]
    lora = L * sum(LORA_R * (i + o) for i, o in io)
    return 4 * frozen + 6 * lora + 6 * L * seq * d_q


def step_fn(model: nn.Module, variant: str, input_ids: torch.Tensor, mem_fraction: float):
    """Configure checkpointing for the variant and return one forward+backward closure."""
    fraction = {"plain": 1.0, "qr_ds": 0.0, "qr_ds-mem": mem_fraction, "qr_ds-nokern": 0.0}[variant]
    selective_checkpointing(model, fraction)
    mask = torch.ones_like(input_ids)
    if variant == "plain":
        return lambda: model(input_ids=input_ids, attention_mask=mask, labels=input_ids).loss.backward()
    # the trainer's module and weighting: each path's tokens weigh 1 / (its tokens x paths)
    student = Student(model, None, use_kernels=variant != "qr_ds-nokern")
    weights = torch.zeros(input_ids.shape, device=input_ids.device)
    weights[:, 1:] = 1.0 / ((input_ids.shape[1] - 1) * input_ids.shape[0])
    return lambda: student(input_ids, mask, input_ids, weights)[0].backward()


def run_variant(model: nn.Module, variant: str, input_ids: torch.Tensor, steps: int, mem_fraction: float) -> dict:
    cuda = input_ids.is_cuda
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    fwd_bwd = step_fn(model, variant, input_ids, mem_fraction)
    times = []
    for i in range(steps + 1):  # the first step warms up (allocator, Triton compile, optimizer state)
        if cuda:
            torch.cuda.synchronize()
            if i == 1:
                torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        fwd_bwd()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    del opt
    step_s = sorted(times[1:])[len(times[1:]) // 2]
    return {"step_s": step_s, "peak_GiB": torch.cuda.max_memory_allocated() / 2**30 if cuda else "n/a (CPU)"}


def main() -> None:
    p = base_argparser(__doc__.splitlines()[0], "bench_student_step")
    p.add_argument("--models", nargs="+", choices=list(SHAPES["full"]), default=["mistral", "gemma"])
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS)
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 3 full, 2 toy)")
    p.add_argument("--mem-fraction", type=float, default=0.75,
                   help="qr_ds-mem: fraction of decoder layers to checkpoint")
    p.add_argument("--no-nf4", action="store_true", help="full size on CUDA: bf16 LoRA instead of nf4 QLoRA")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1 avoids oversubscription on shared CPUs)")
    args = p.parse_args()
    claim_results(args)
    size = resolve_size(args)
    device = "cuda" if size == "full" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_student_step: --size full needs CUDA (7B shapes, nf4); use --size toy on CPU")
    torch.set_num_threads(args.threads)
    nf4 = device == "cuda" and not args.no_nf4
    steps = args.steps or (3 if size == "full" else 2)
    batch, seq = BATCH[size]
    rows = []

    def save(complete: bool):  # after every variant: a run killed by its time limit keeps what it measured
        return save_results(args.name, rows, {"size": size, "weights": "random", "complete": complete,
                                              "flops_formula": FLOPS_FORMULA}, args.out)

    for name in args.models:
        shape = SHAPES[size][name]
        model = build(shape, device, nf4)
        input_ids = torch.randint(0, shape["vocab_size"], (batch, seq), device=device)
        flops = flops_per_token(shape, seq)
        plain_tok_s = None
        for variant in tqdm(args.variants, desc=f"{name} ({size}, {device})", leave=False):
            row = {"model": name, "variant": variant, "batch": f"{batch}x{seq}",
                   "quant": "nf4" if nf4 else ("bf16" if device == "cuda" else "fp32")}
            try:
                result = run_variant(model, variant, input_ids, steps, args.mem_fraction)
            except torch.cuda.OutOfMemoryError as e:  # a finding for this variant; the next ones still run
                rows.append({**row, "error": f"CUDA out of memory: {str(e)[:200]}"})
                model.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                save(False)
                continue
            tok_s = batch * seq / result["step_s"]
            plain_tok_s = tok_s if variant == "plain" else plain_tok_s
            rows.append({
                **row, "step_s": result["step_s"], "tok_s": tok_s,
                "vs_plain": tok_s / plain_tok_s if plain_tok_s else "",
                "peak_GiB": result["peak_GiB"],
                "MFU": tok_s * flops / H100_BF16_FLOPS if device == "cuda" else "n/a (CPU)",
            })
            if device == "cuda":
                torch.cuda.empty_cache()
            save(False)
        del model
    print(f"# student step, {size} size on {device}\n\n{FLOPS_FORMULA}\n")
    if "qr_ds-mem" in args.variants:
        print(f"qr_ds-mem checkpoints {args.mem_fraction:.0%} of the decoder layers.\n")
    print(markdown_table(rows))
    path = save(True)
    print(f"\nwrote {path}")
    if args.plot:
        labelled = [{**r, "label": f"{r['model']} {r['variant']}"} for r in rows]
        print("plot:", plot_bars(path.with_suffix(".png"), labelled, "label", "tok_s", f"student step tokens/s ({size}, {device})"))


if __name__ == "__main__":
    main()
