"""Tiny random-init students with locally trained tokenizers, for CPU tests and the demo.

Each kind pairs an architecture with a different tokenizer type, so cross-tokenizer code meets
real differences: Llama + byte-level BPE (GPT-2 pre-tokenization: digit runs stay together),
Gemma + Unigram (Metaspace), Qwen2 + byte-level BPE with Qwen2's own pre-tokenization (single
digits, NFC). Each pipeline is one AutoTokenizer rebuilds for its architecture: transformers 5 builds
Qwen2's tokenizer class for a qwen2 config whatever the folder's tokenizer_class says, so a WordPiece
saved beside a Qwen2 model loaded as BPE over its vocabulary and lost every space. head_dim is 64
because vLLM's CPU attention refuses smaller heads. Saved with save_pretrained and loaded back
through from_pretrained(dir), the same path a 7B checkpoint takes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

KINDS = ("llama-bpe", "gemma-unigram", "qwen-bpe")
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def train_tokenizer(kind: str, corpus: Iterable[str], vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2_PRETOKENIZE_REGEX

    corpus = list(corpus)
    if kind not in KINDS:
        raise ValueError(f"unknown tiny kind {kind!r}; choose from {KINDS}")
    arch = kind.split("-")[0]
    if arch == "gemma":
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, unk_token="<unk>")
    else:
        tok = Tokenizer(models.BPE(unk_token=None))
        if arch == "llama":
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        else:  # Qwen2Tokenizer's pipeline: AutoTokenizer's rebuild of it over our vocabulary is then this tokenizer
            tok.normalizer = normalizers.NFC()
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


def model_config(kind: str, vocab_size: int, hidden: int = 128, layers: int = 2):
    from transformers import GemmaConfig, LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                  num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                  max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    arch = kind.split("-")[0] if kind in KINDS else None
    if arch == "llama":
        return LlamaConfig(**common, tie_word_embeddings=False)
    if arch == "gemma":
        return GemmaConfig(**common, head_dim=64)
    if arch == "qwen":
        return Qwen2Config(**common, tie_word_embeddings=False)
    raise ValueError(f"unknown tiny kind {kind!r}; choose from {KINDS}")


def tokenizer_dir(model_dir: str | Path) -> Path:
    """The tokenizer folder to configure for a tiny student: the model's own, where every kind loads
    through AutoTokenizer as trained (tests/test_tiny.py)."""
    return Path(model_dir)


def build_tiny_student(kind: str, out_dir: str | Path, corpus: Iterable[str], vocab_size: int = 512,
                       hidden: int = 128, layers: int = 2, seed: int = 0) -> Path:
    """Train a tokenizer of ``kind`` on ``corpus``, build a random-init model, save both to ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM

    out_dir = Path(out_dir)
    tok = train_tokenizer(kind, corpus, vocab_size)
    torch.manual_seed(seed)
    cfg = model_config(kind, len(tok), hidden, layers)
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir
