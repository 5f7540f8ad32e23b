"""Kernels vs their pure-torch references: forward and backward, Triton under TRITON_INTERPRET=1 on CPU."""
import os
import subprocess
import sys

import torch

# Before qr_ds.kernels is first imported (triton.jit reads it then): on CPU the kernels run in the
# interpreter. With CUDA the real compiled kernels are tested.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from qr_ds.kernels import (  # noqa: E402
    causal_lm_loss,
    fused_linear_cross_entropy,
    reference_linear_cross_entropy,
    reference_span_mean_pool,
    reference_span_pool_project,
    selective_checkpointing,
    span_mean_pool,
    span_pool_project,
    triton_available,
)

PATHS = ["triton", "torch"]


def _ce_inputs(n=23, h=16, v=100, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * 0.5).to(dtype).requires_grad_()
    labels = torch.randint(0, v, (n,), generator=g)
    labels[::4] = -100
    return hidden, weight, labels


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


def test_triton_available_under_interpreter():
    # Fails if qr_ds.kernels was imported before TRITON_INTERPRET was set: the "triton" cases would then test torch.
    assert triton_available()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("softcap", [None, 2.5])
@pytest.mark.parametrize("weighted", [False, True])
def test_fused_ce_matches_reference(path, softcap, weighted):
    hidden, weight, labels = _ce_inputs()
    tw = torch.rand(len(labels), generator=torch.Generator().manual_seed(1)).requires_grad_() if weighted else None
    inputs = [hidden, weight] + ([tw] if weighted else [])
    loss, ce = fused_linear_cross_entropy(hidden, weight, labels, tw, chunk_size=8, softcap=softcap,
                                          force_torch=path == "torch")
    ref_loss, ref_ce = reference_linear_cross_entropy(hidden, weight, labels, tw, softcap=softcap)
    assert loss.dim() == 0 and ce.dtype == torch.float32 and not ce.requires_grad
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ce, ref_ce, rtol=1e-5, atol=1e-5)
    assert torch.all(ce[labels == -100] == 0)
    # An upstream grad other than 1 must scale every precomputed gradient.
    for got, want in zip(_grads(3.0 * loss, inputs), _grads(3.0 * ref_loss, inputs)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_fused_ce_weighted_is_sum_of_weighted_ce():
    hidden, weight, labels = _ce_inputs()
    tw = torch.rand(len(labels))
    loss, ce = fused_linear_cross_entropy(hidden, weight, labels, tw, force_torch=True)
    torch.testing.assert_close(loss, (tw * ce).sum())
    mean_loss, _ = fused_linear_cross_entropy(hidden, weight, labels, force_torch=True)
    torch.testing.assert_close(mean_loss, ce.sum() / (labels != -100).sum())


@pytest.mark.parametrize("path", PATHS)
def test_fused_ce_frozen_weight(path):
    hidden, weight, labels = _ce_inputs()
    weight.requires_grad_(False)
    loss, _ = fused_linear_cross_entropy(hidden, weight, labels, chunk_size=5, force_torch=path == "torch")
    loss.backward()
    assert weight.grad is None
    ref_loss, _ = reference_linear_cross_entropy(hidden, weight, labels)
    torch.testing.assert_close(hidden.grad, _grads(ref_loss, [hidden])[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("path", PATHS)
def test_fused_ce_bf16(path):
    hidden, weight, labels = _ce_inputs(dtype=torch.bfloat16)
    loss, ce = fused_linear_cross_entropy(hidden, weight, labels, chunk_size=8, force_torch=path == "torch")
    gh, gw = _grads(loss, [hidden, weight])
    assert gh.dtype == torch.bfloat16 and gw.dtype == torch.bfloat16
    h32, w32 = hidden.detach().float().requires_grad_(), weight.detach().float().requires_grad_()
    ref_loss, ref_ce = reference_linear_cross_entropy(h32, w32, labels)
    torch.testing.assert_close(loss, ref_loss, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(ce, ref_ce, rtol=2e-2, atol=5e-2)
    for got, want in zip((gh, gw), _grads(ref_loss, [h32, w32])):
        torch.testing.assert_close(got.float(), want, rtol=5e-2, atol=5e-3)


@pytest.mark.parametrize("path", PATHS)
def test_fused_ce_all_ignored_is_zero_not_nan(path):
    hidden, weight, labels = _ce_inputs(n=6)
    labels[:] = -100
    loss, ce = fused_linear_cross_entropy(hidden, weight, labels, force_torch=path == "torch")
    gh, gw = _grads(loss, [hidden, weight])
    assert loss.item() == 0 and torch.all(ce == 0)
    assert torch.all(gh == 0) and torch.all(gw == 0)


def test_fused_ce_chunk_size_does_not_change_result():
    hidden, weight, labels = _ce_inputs()
    results = [fused_linear_cross_entropy(hidden, weight, labels, chunk_size=c, force_torch=True)[1] for c in (1, 7, None)]
    for other in results[1:]:
        torch.testing.assert_close(other, results[0])


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any torch op returns while active."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def test_fused_ce_never_materializes_full_logits():
    hidden, weight, labels = _ce_inputs(n=64, h=8, v=100)
    weight.requires_grad_(False)
    with LargestTensor() as fused:
        loss, _ = fused_linear_cross_entropy(hidden, weight, labels, chunk_size=8, force_torch=True)
        loss.backward()
    with LargestTensor() as ref:
        reference_linear_cross_entropy(hidden, weight, labels)[0].backward()
    assert ref.numel == 64 * 100
    assert fused.numel <= 8 * 100  # one chunk of logits; hidden and weight are smaller here


def test_fused_ce_under_no_grad_matches_reference():
    hidden, weight, labels = _ce_inputs()
    with torch.no_grad():
        loss, ce = fused_linear_cross_entropy(hidden, weight, labels, chunk_size=8)
        ref_loss, ref_ce = reference_linear_cross_entropy(hidden, weight, labels)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(ce, ref_ce)


def test_fused_ce_rejects_bad_shapes():
    hidden, weight, labels = _ce_inputs()
    with pytest.raises(ValueError, match="labels"):
        fused_linear_cross_entropy(hidden, weight, labels[:-1])
    with pytest.raises(ValueError, match="weight"):
        fused_linear_cross_entropy(hidden, weight[:, :-1], labels)
    with pytest.raises(ValueError, match="token_weights"):
        fused_linear_cross_entropy(hidden, weight, labels, torch.ones(3))
    with pytest.raises(ValueError, match="dtype"):
        fused_linear_cross_entropy(hidden, weight.double(), labels)


def _span_inputs(dtype=torch.float32):
    hidden = torch.randn(2, 11, 12, generator=torch.Generator().manual_seed(0)).to(dtype).requires_grad_()
    span_ids = torch.tensor([[0, 0, 1, 1, -1, 2, 2, 2, -1, -1, 0],
                             [-1, 1, 1, 1, 1, 1, 0, -1, -1, -1, -1]])
    return hidden, span_ids, 4  # span 3 is empty in both rows, span 2 in the second


@pytest.mark.parametrize("path", PATHS)
def test_span_mean_pool_matches_reference(path):
    hidden, span_ids, m = _span_inputs()
    pooled, counts = span_mean_pool(hidden, span_ids, m, force_torch=path == "torch")
    ref, ref_counts = reference_span_mean_pool(hidden, span_ids, m)
    torch.testing.assert_close(pooled, ref)
    assert counts.tolist() == [[3, 2, 3, 0], [1, 5, 0, 0]] == ref_counts.tolist()
    torch.testing.assert_close(pooled[0, 0], hidden[0, [0, 1, 10]].mean(0))
    assert torch.all(pooled[:, 3] == 0)
    up = torch.randn_like(pooled)
    torch.testing.assert_close(_grads((pooled * up).sum(), [hidden])[0], _grads((ref * up).sum(), [hidden])[0])


@pytest.mark.parametrize("path", PATHS)
def test_span_pool_project_matches_reference_and_zeroes_empty_spans(path):
    hidden, span_ids, m = _span_inputs()
    weight = torch.randn(5, 12).requires_grad_()
    bias = torch.randn(5).requires_grad_()
    out = span_pool_project(hidden, span_ids, m, weight, bias, force_torch=path == "torch")
    ref = reference_span_pool_project(hidden, span_ids, m, weight, bias)
    assert out.shape == (2, 4, 5)
    assert torch.all(out[:, 3] == 0) and torch.all(out[1, 2] == 0)  # bias excluded too
    torch.testing.assert_close(out, ref)
    up = torch.randn_like(out)
    for got, want in zip(_grads((out * up).sum(), [hidden, weight, bias]), _grads((ref * up).sum(), [hidden, weight, bias])):
        torch.testing.assert_close(got, want)


def test_span_pool_bf16():
    hidden, span_ids, m = _span_inputs(torch.bfloat16)
    pooled, _ = span_mean_pool(hidden, span_ids, m)
    assert pooled.dtype == torch.bfloat16
    ref, _ = reference_span_mean_pool(hidden.float(), span_ids, m)
    torch.testing.assert_close(pooled.float(), ref, rtol=1e-2, atol=1e-2)
    (gh,) = _grads(pooled.float().sum(), [hidden])
    assert gh.dtype == torch.bfloat16 and torch.all(gh[span_ids < 0] == 0)


def test_span_pool_rejects_out_of_range_span():
    hidden, span_ids, _ = _span_inputs()
    with pytest.raises(ValueError, match="n_spans=2"):
        span_mean_pool(hidden, span_ids, 2)


# Just over one block of each multi-block loop as the interpreter runs it (CPU blocks: 65536 vocab
# columns, 1024 tokens, 256 hidden units), so the loops' second, partly masked pass runs on CPU too.
CPU_VOCAB_BLOCK, CPU_TOKEN_BLOCK, CPU_HIDDEN_BLOCK = 65536, 1024, 256


@pytest.mark.parametrize("softcap", [None, 2.5])
def test_fused_ce_crosses_vocab_blocks(softcap):
    """Labels on both sides of the first block's end and the largest logit in the second block: the
    online max / sum-exp must carry over blocks, and the gradient pass must reach the last columns."""
    v = CPU_VOCAB_BLOCK + 37
    hidden, weight, _ = _ce_inputs(n=5, h=8, v=v)
    labels = torch.tensor([3, CPU_VOCAB_BLOCK - 1, CPU_VOCAB_BLOCK, v - 1, -100])
    with torch.no_grad():
        weight[v - 5] = hidden[0] * 4  # row 0's largest logit lies past the first block
    tw = torch.rand(5, generator=torch.Generator().manual_seed(2)).requires_grad_()
    loss, ce = fused_linear_cross_entropy(hidden, weight, labels, tw, chunk_size=8, softcap=softcap)
    ref_loss, ref_ce = reference_linear_cross_entropy(hidden, weight, labels, tw, softcap=softcap)
    torch.testing.assert_close(ce, ref_ce, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for got, want in zip(_grads(loss, [hidden, weight, tw]), _grads(ref_loss, [hidden, weight, tw])):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_span_pool_crosses_token_and_hidden_blocks():
    """Forward: a span with tokens on both sides of the first token block's end, and hidden units past
    the first hidden block. Backward (one program per token, blocks over hidden units only): the same
    hidden width on a short row, which keeps the interpreter's per-token programs few."""
    g = torch.Generator().manual_seed(0)
    t, h = CPU_TOKEN_BLOCK + 40, CPU_HIDDEN_BLOCK + 8
    hidden = torch.randn(1, t, h, generator=g)
    span_ids = torch.full((1, t), -1)
    span_ids[0, :10], span_ids[0, 1000:1050], span_ids[0, -3:] = 0, 1, 2
    pooled, counts = span_mean_pool(hidden, span_ids, 3)
    ref, ref_counts = reference_span_mean_pool(hidden, span_ids, 3)
    assert counts.tolist() == ref_counts.tolist() == [[10, 50, 3]]
    torch.testing.assert_close(pooled, ref)

    short = hidden[:, :40].clone().requires_grad_()
    ids = torch.tensor([[-1] * 5 + [0] * 20 + [1] * 10 + [-1] * 5])
    pooled, _ = span_mean_pool(short, ids, 2)
    ref, _ = reference_span_mean_pool(short, ids, 2)
    up = torch.randn(pooled.shape, generator=g)
    torch.testing.assert_close(_grads((pooled * up).sum(), [short])[0], _grads((ref * up).sum(), [short])[0])


def test_triton_kernels_compile_for_h100_without_gpu():
    # The interpreter runs the kernels as Python; this compiles them for real (sm_90 cubin via Triton's ptxas).
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-W", "ignore", "-m", "qr_ds.kernels.aot_check", "--dtypes", "bf16"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 4 and all(line.endswith("sm_90 cubin ok") for line in lines), out.stdout


@pytest.mark.gpu
def test_fused_ce_cuda_bf16_large_vocab():
    hidden, weight, labels = _ce_inputs(n=512, h=256, v=50_000, dtype=torch.bfloat16)
    hidden, weight, labels = (t.detach().cuda() for t in (hidden, weight, labels))
    hidden.requires_grad_()
    loss, _ = fused_linear_cross_entropy(hidden, weight, labels, chunk_size=128)
    (gh,) = _grads(loss, [hidden])
    ref_loss, _ = reference_linear_cross_entropy(hidden, weight, labels)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(gh.float(), _grads(ref_loss, [hidden])[0].float(), rtol=5e-2, atol=1e-3)


@pytest.mark.gpu
def test_span_pool_project_cuda_bf16():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, 300, 512, generator=g).to("cuda", torch.bfloat16).requires_grad_()
    span_ids = torch.randint(-1, 20, (4, 300), generator=g).cuda()
    weight = torch.randn(64, 512, generator=g).to("cuda", torch.bfloat16)
    out = span_pool_project(hidden, span_ids, 24, weight)
    ref = reference_span_pool_project(hidden, span_ids, 24, weight)
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)
    up = torch.randn_like(out)
    torch.testing.assert_close(_grads((out * up).sum(), [hidden])[0].float(),
                               _grads((ref * up).sum(), [hidden])[0].float(), rtol=2e-2, atol=2e-3)


# --- causal_lm_loss on tiny random HF models, loaded through from_pretrained like real students ---

_SAVED: dict = {}  # kind -> saved model dir, built once per session


def _tiny_model(kind: str, tmp_path_factory):
    from transformers import AutoModelForCausalLM, Gemma2Config, GemmaConfig, LlamaConfig

    if kind not in _SAVED:
        common = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        config = {
            "llama": lambda: LlamaConfig(**common),
            "gemma": lambda: GemmaConfig(**common, head_dim=8),
            "gemma2": lambda: Gemma2Config(**common, head_dim=8, final_logit_softcapping=5.0),
        }[kind]()
        torch.manual_seed(0)
        _SAVED[kind] = tmp_path_factory.mktemp(kind)
        AutoModelForCausalLM.from_config(config).save_pretrained(_SAVED[kind])
    return AutoModelForCausalLM.from_pretrained(_SAVED[kind], torch_dtype=torch.float32, attn_implementation="eager")


def _lora(model):
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # nonzero B so LoRA changes the output and its grads are nontrivial
            torch.nn.init.normal_(p, std=0.1)
    return model


def _batch():
    g = torch.Generator().manual_seed(3)
    input_ids = torch.randint(0, 96, (2, 9), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, -2:] = 0
    labels = input_ids.clone()
    labels[:, :3] = -100  # prompt tokens
    labels[attention_mask == 0] = -100
    return input_ids, attention_mask, labels


@pytest.mark.parametrize("kind", ["llama", "gemma", "gemma2"])
@pytest.mark.parametrize("use_kernels", [True, False])
def test_causal_lm_loss_matches_hf_loss(kind, use_kernels, tmp_path_factory):
    model = _lora(_tiny_model(kind, tmp_path_factory))
    input_ids, attention_mask, labels = _batch()
    trainable = [p for p in model.parameters() if p.requires_grad]
    hf_loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    hf_grads = _grads(hf_loss, trainable)
    loss, per_token, hidden = causal_lm_loss(model, input_ids, attention_mask, labels, use_kernels=use_kernels)
    torch.testing.assert_close(loss, hf_loss, rtol=1e-5, atol=1e-5)
    for got, want in zip(_grads(loss, trainable), hf_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert per_token.shape == labels.shape and torch.all(per_token[labels == -100] == 0)
    assert torch.all(per_token[labels != -100] > 0)
    torch.testing.assert_close(per_token.sum() / (labels != -100).sum(), loss.detach())
    assert hidden.shape == (2, 9, 32) and hidden.requires_grad


def test_causal_lm_loss_sequence_weights_and_pooling_grads(tmp_path_factory):
    model = _lora(_tiny_model("llama", tmp_path_factory))
    input_ids, attention_mask, labels = _batch()
    w = torch.tensor([0.25, 2.0])
    loss, per_token, hidden = causal_lm_loss(model, input_ids, attention_mask, labels, token_weights=w)
    torch.testing.assert_close(loss, (per_token.sum(1) * w).sum())
    # The returned hidden states feed span pooling in the same graph (no second forward).
    span_ids = torch.full(labels.shape, -1)
    span_ids[:, 3:6] = 0
    pooled = span_pool_project(hidden, span_ids, 1, torch.randn(4, 32))
    lora_b = next(p for n, p in model.named_parameters() if "lora_B" in n)
    assert _grads(pooled.square().sum(), [lora_b])[0].abs().sum() > 0


def test_selective_checkpointing_keeps_loss_and_grads(tmp_path_factory):
    model = _lora(_tiny_model("llama", tmp_path_factory))
    model.train()
    input_ids, attention_mask, labels = _batch()
    trainable = [p for p in model.parameters() if p.requires_grad]
    loss, _, _ = causal_lm_loss(model, input_ids, attention_mask, labels)
    want = _grads(loss, trainable)
    assert selective_checkpointing(model, 0.5) == 1
    flags = [m.gradient_checkpointing for m in model.modules() if type(m).__name__ == "LlamaDecoderLayer"]
    assert flags == [True, False]
    ckpt_loss, _, _ = causal_lm_loss(model, input_ids, attention_mask, labels)
    torch.testing.assert_close(ckpt_loss, loss)
    for got, ref in zip(_grads(ckpt_loss, trainable), want):
        torch.testing.assert_close(got, ref)
    assert selective_checkpointing(model, 0.0) == 0
    with pytest.raises(ValueError, match="fraction"):
        selective_checkpointing(model, 1.5)
