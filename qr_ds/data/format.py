"""One prompt format for training and evaluation, so a student sees at test time what it learned on.

The student gets the task's zero-shot instruction and the question (paper section 2.1); its
target is the teacher's path. Chat templates are used where the tokenizer has one.
Token ids are produced here, once, for every backend: text handed to two engines that add
BOS differently is how greedy outputs drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass

PLAIN_TEMPLATE = "{question}\n{instruction}\n"


def user_message(question: str, instruction: str) -> str:
    return f"{question}\n{instruction}" if instruction else question


def render_prompt(tokenizer, question: str, instruction: str) -> str:
    """The prompt text, ending where the model's answer starts."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user_message(question, instruction)}],
            tokenize=False,
            add_generation_prompt=True,
        )
    return PLAIN_TEMPLATE.format(question=question, instruction=instruction)


def tokenizer_adds_specials(tokenizer, prompt: str) -> bool:
    """BOS exactly once: from the chat template or the prompt text when they carry it, else from the tokenizer."""
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and prompt.startswith(bos)) and not getattr(tokenizer, "chat_template", None)


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Prompt ids exactly as training saw them."""
    return tokenizer(prompt, add_special_tokens=tokenizer_adds_specials(tokenizer, prompt))["input_ids"]


@dataclass
class EncodedExample:
    input_ids: list[int]
    offsets: list[tuple[int, int]]  # character span of each token in ``text``; (0, 0) for specials
    response_start: int  # character index in ``text`` where the response begins
    text: str


def encode_sft(tokenizer, prompt: str, response: str) -> EncodedExample:
    """Prompt + response + EOS, tokenized together, with character offsets for span alignment: the
    reference for the training data builder, which calls the tokenizer's Rust pipeline in batches
    (train/encoding.py) and is tested against this."""
    text = prompt + response + (tokenizer.eos_token or "")
    enc = tokenizer(text, add_special_tokens=tokenizer_adds_specials(tokenizer, prompt), return_offsets_mapping=True)
    offsets = enc.get("offset_mapping")
    if offsets is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} gives no offset mapping; qr_ds aligns students on "
                         "character spans and needs a fast tokenizer (use_fast=True)")
    return EncodedExample(list(enc["input_ids"]), [tuple(o) for o in offsets], len(prompt), text)
