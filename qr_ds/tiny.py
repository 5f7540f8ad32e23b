"""Tiny random-init students with locally trained tokenizers, for CPU tests and the demo.

Each kind pairs an architecture with a different tokenizer type, so cross-tokenizer code meets
real differences: Llama + byte-level BPE, Gemma + Unigram, Qwen2 + WordPiece. head_dim is 64
because vLLM's CPU attention refuses smaller heads. Saved with save_pretrained and loaded back
through from_pretrained(dir), the same path a 7B checkpoint takes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

KINDS = ("llama-bpe", "gemma-unigram", "qwen-wordpiece")
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def train_tokenizer(kind: str, corpus: Iterable[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = list(corpus)
    if kind not in KINDS:
        raise ValueError(f"unknown tiny kind {kind!r}; choose from {KINDS}")
    tokenizer_type = kind.split("-")[1]
    if tokenizer_type == "bpe":
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    elif tokenizer_type == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, unk_token="<unk>")
    else:
        tok = Tokenizer(models.WordPiece(unk_token="<unk>"))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS)
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
    """Where a tiny student's tokenizer loads as trained.

    transformers 5 ignores tokenizer.json's pipeline for some model types: for a ``qwen2`` config
    AutoTokenizer builds Qwen2's byte-level tokenizer over our vocabulary, which loses every space
    ("Letmesolvethis."). Next to no config.json, the tokenizer loads as saved.
    """
    return Path(model_dir) / "tokenizer"


def build_tiny_student(kind: str, out_dir: str | Path, corpus: Iterable[str], vocab_size: int = 512,
                       hidden: int = 128, layers: int = 2, seed: int = 0) -> Path:
    """Train a tokenizer of ``kind`` on ``corpus``, build a random-init model, save both to ``out_dir``
    (the tokenizer also to ``tokenizer_dir(out_dir)``, the copy to configure as the student's tokenizer)."""
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
    tok.save_pretrained(tokenizer_dir(out_dir))
    return out_dir
