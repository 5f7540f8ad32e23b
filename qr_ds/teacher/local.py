"""Local teachers: vLLM's offline engine (batched chat) and transformers ``generate`` (the fallback).

vLLM spawns worker processes: a script using VllmTeacher must run under
``if __name__ == "__main__":`` (``python -m qr_ds generate`` does). On CPU use dtype float32,
enforce_eager, a small max_model_len; gpu_memory_utilization is then the share of host RAM.
"""
from __future__ import annotations

from typing import Iterable

from qr_ds.teacher.base import Completion, OnDone, Request
from qr_ds.teacher.config import TeacherConfig


def _batches(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


class VllmTeacher:
    def __init__(self, cfg: TeacherConfig):
        from vllm import LLM

        self.cfg = cfg
        self.model = cfg.model
        self.llm = LLM(model=cfg.model, dtype=cfg.dtype, max_model_len=cfg.max_model_len,
                       enforce_eager=cfg.enforce_eager, gpu_memory_utilization=cfg.gpu_memory_utilization,
                       seed=cfg.sampling.seed)

    def run(self, requests: Iterable[Request], on_done: OnDone) -> None:
        from vllm import SamplingParams

        s = self.cfg.sampling
        for batch in _batches(list(requests), self.cfg.batch_size):
            params = [SamplingParams(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=r.seed)
                      for r in batch]
            try:
                outs = self.llm.chat([[{"role": "user", "content": r.prompt}] for r in batch], params, use_tqdm=False)
            except (ValueError, RuntimeError) as e:  # e.g. a prompt longer than max_model_len
                for r in batch:
                    on_done(r, Completion(None, error=f"vllm: {str(e)[:200]}"))
                continue
            for r, out in zip(batch, outs):
                o = out.outputs[0]
                on_done(r, Completion(o.text, tokens_in=len(out.prompt_token_ids or []), tokens_out=len(o.token_ids),
                                      finish_reason=o.finish_reason))


class HFTeacher:
    def __init__(self, cfg: TeacherConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        self.model = cfg.model
        self.tok = AutoTokenizer.from_pretrained(cfg.model)
        self.tok.padding_side = "left"  # batched decoding continues right after each prompt
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        dtype = "auto" if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
        self.lm = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype).eval()
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.lm.to(self.device)

    def run(self, requests: Iterable[Request], on_done: OnDone) -> None:
        import torch

        from qr_ds.data.format import render_prompt

        s = self.cfg.sampling
        for batch in _batches(list(requests), self.cfg.batch_size):
            texts = [render_prompt(self.tok, r.prompt, "") for r in batch]
            enc = self.tok(texts, return_tensors="pt", padding=True,
                           add_special_tokens=not getattr(self.tok, "chat_template", None)).to(self.device)
            torch.manual_seed(batch[0].seed)  # HF samples a batch from one generator
            with torch.no_grad():
                out = self.lm.generate(**enc, max_new_tokens=s.max_tokens, do_sample=s.temperature > 0,
                                       temperature=s.temperature or None, top_p=s.top_p,
                                       pad_token_id=self.tok.pad_token_id)
            width = enc["input_ids"].shape[1]
            for i, r in enumerate(batch):
                new = out[i, width:]
                n_out = int((new != self.tok.pad_token_id).sum())
                text = self.tok.decode(new, skip_special_tokens=True)
                on_done(r, Completion(text, tokens_in=int(enc["attention_mask"][i].sum()), tokens_out=n_out,
                                      finish_reason="length" if n_out >= s.max_tokens else "stop"))
