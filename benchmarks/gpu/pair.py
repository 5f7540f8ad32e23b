"""The real small pair (SmolLM2-135M-Instruct, Gemma-3-270M) as student folders for the GPU run.

Their published shapes (bench_student_step.SHAPES) with random weights and a small tokenizer
trained here: the real weights (0.5 and 1.1 GB) and tokenizers cannot travel to the GPU machine.
Where ``qr_ds.models.packaged.materialize`` exists and gives a folder, the packaged real model is
used instead. Every caller records which one it got (``weights``).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/; never the repo root, whose kernels/
# would shadow the `kernels` package bitsandbytes and transformers import

from bench_student_step import SHAPES, random_model  # noqa: E402

# shape name -> (tokenizer kind trained for the random-weight student, packaged model name)
PAIR = {"smollm2": ("llama-bpe", "smollm2-135m-instruct"), "gemma3": ("gemma-unigram", "gemma3-270m")}


def packaged(name: str) -> tuple[Path | None, str]:
    """The packaged real model's folder when the project can materialize it, else None and why not."""
    try:
        from qr_ds.models.packaged import materialize
    except ImportError as e:
        return None, f"random weights ({e})"
    try:
        return Path(materialize(PAIR[name][1])), "packaged"
    except Exception as e:  # noqa: BLE001 - any failure means: fall back, and say why in the JSON
        return None, f"random weights (materialize({PAIR[name][1]!r}) failed: {e!r:.200})"


def student_dir(name: str, size: str, out: Path, corpus: list[str], dtype: str) -> tuple[Path, Path, str]:
    """A loadable student for ``name``: its model folder, its tokenizer folder, and which weights."""
    import torch

    from qr_ds.tiny import tokenizer_dir, train_tokenizer

    real, weights = packaged(name) if size == "full" else (None, "random weights (toy size)")
    if real is not None:
        return real, real, weights
    tok = train_tokenizer(PAIR[name][0], corpus, vocab_size=1000)
    model = random_model(SHAPES[size][name], "cpu", getattr(torch, dtype), pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model.generation_config.pad_token_id = tok.pad_token_id
    out = out / name
    model.save_pretrained(out)
    tok.save_pretrained(out)
    tok.save_pretrained(tokenizer_dir(out))
    return out, tokenizer_dir(out), weights
