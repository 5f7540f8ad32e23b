"""Typed config of the ``embed`` stage."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qr_ds.config import rule


def matrix_path(out: Path) -> Path:
    return out.with_name(out.stem + ".npy")


@dataclass
class EmbedConfig:
    pool: Path = field(metadata=rule(help="pool JSONL to embed (usually the filtered pool)"))
    out: Path = field(metadata=rule(help="embedded pool JSONL; the matrix is <out stem>.npy beside it"))
    encoder: str = field(default="default", metadata=rule(help="'default' (offline all-MiniLM-L6-v2), a sentence-transformers or HF encoder name/dir"))
    batch_size: int = field(default=64, metadata=rule(min=1, help="texts per encoder batch"))
    max_seq_length: int | None = field(default=None, metadata=rule(min=8, help="truncate texts to this many tokens"))
    normalize: bool = field(default=True, metadata=rule(help="L2-normalize embeddings"))
    cache_dir: Path | None = field(default=None, metadata=rule(help="text-hash cache (default: <out folder>/embed_cache)"))
    device: str | None = field(default=None, metadata=rule(help="torch device (default: cuda if available)"))
    min_embedded_share: float = field(default=1.0, metadata=rule(min=0.0, max=1.0, help="the run stops before encoding (exit 2, naming the quarantine file) when a smaller share of the pool's paths can be embedded: those with a response, over those plus the lines refused at load; none at all always fails"))

    def files(self) -> tuple[dict[str, Path], dict[str, Path]]:
        """(outputs, inputs), each by the config key that names it: stages refuse an output that is an input."""
        return {"out": self.out, "out (its matrix)": matrix_path(self.out)}, {"pool": self.pool}
