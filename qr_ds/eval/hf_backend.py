"""transformers backend: batched greedy generation with left padding and the KV cache.

Used where vLLM is not installed; gives the same greedy ids as vLLM for the same model and
adapter (see generation.py for what had to agree). Adapters are loaded unmerged, one at a time.
"""
from __future__ import annotations

import time
from collections import defaultdict

import torch
from tqdm import tqdm

from qr_ds.eval.generation import FullRef, Generation, LoraRef, Request, trim

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HFBackend:
    name = "hf"

    def __init__(self, dtype: str = "float32", batch_size: int = 16, device: str | None = None, **_: object):
        self.dtype, self.batch_size = DTYPES[dtype], batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.generate_s = 0.0  # seconds inside generate calls, model loading excluded (benchmarks)

    def generate(self, model: str, tokenizer: str, requests: list[Request], stops: list[int],
                 max_new_tokens: int, max_lora_rank: int = 0) -> list[Generation]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer)
        pad = tok.pad_token_id if tok.pad_token_id is not None else stops[0]
        def load(path: str):
            return AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype).to(self.device).eval()

        net = load(model) if any(r.full is None for r in requests) else None  # only full checkpoints: no base
        groups: dict[LoraRef | FullRef | None, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            groups[r.lora or r.full].append(i)
        out: list[Generation | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc=f"hf generate {model}", unit="prompt")
        peft_net = None
        for lora, idx in sorted(groups.items(), key=lambda kv: kv[0] is not None):  # base model first
            if lora is None:
                runner = net
            elif isinstance(lora, FullRef):
                runner = load(str(lora.path))
            else:
                from peft import PeftModel

                name = f"{lora.name}#{lora.lora_id}"  # unique, like vLLM's ids: no stale weights
                if peft_net is None:
                    peft_net = PeftModel.from_pretrained(net, str(lora.path), adapter_name=name).eval()
                else:
                    peft_net.load_adapter(str(lora.path), adapter_name=name)
                peft_net.set_adapter(name)
                runner = peft_net
            idx = sorted(idx, key=lambda i: len(requests[i].prompt_ids))  # similar lengths share a batch
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                t0 = time.perf_counter()
                for i, g in zip(chunk, self._batch(runner, [requests[i].prompt_ids for i in chunk], pad, stops,
                                                   max_new_tokens)):
                    out[i] = g
                self.generate_s += time.perf_counter() - t0
                bar.update(len(chunk))
            if isinstance(lora, LoraRef):
                peft_net.delete_adapter(name)
        bar.close()
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def _batch(self, net, prompts: list[list[int]], pad: int, stops: list[int], max_new_tokens: int):
        from transformers import GenerationConfig

        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        # a fresh config: the model's generation_config.json must not add sampling or penalties
        gen_cfg = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                                   repetition_penalty=1.0, eos_token_id=stops, pad_token_id=pad,
                                   output_logits=True, return_dict_in_generate=True)
        res = net.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg)
        new = res.sequences[:, width:]
        logits = torch.stack(res.logits, dim=1).float()  # raw logits, as vLLM's raw logprobs
        lps = torch.log_softmax(logits, dim=-1).gather(-1, new[:, : logits.shape[1], None])[..., 0]
        return [trim(new[b].tolist(), lps[b].tolist(), stops) for b in range(len(prompts))]
