"""Embed every path's response once; store a float32 .npy the trainer memory-maps.

Vectors are cached by text hash in ``<cache_dir>/<encoder>[-norm]/`` as an append-only raw
float32 file plus an index (hash -> row), so identical texts are encoded once and later runs
(or other pools) reuse them. The pool's matrix has one row per distinct text, in pool order;
each record's ``embedding`` names the file (relative to the pool's folder), row and text hash.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from qr_ds.data.jsonl import JsonlAppender, LoadReport, iter_jsonl, naming_path, repair_tail
from qr_ds.data.pool import EmbeddingRef, PathRecord, load_pool, write_pool
from qr_ds.embed.config import EmbedConfig
from qr_ds.embed.encoder import Encoder, encoder_slug
from qr_ds.embed.lookup import text_hash


def matrix_path(out: Path) -> Path:
    return out.with_name(out.stem + ".npy")


class VectorCache:
    """hash -> float32 vector, persisted append-only (vectors.f32 + index.jsonl)."""

    def __init__(self, folder: Path, dim: int):
        self.folder, self.dim = folder, dim
        folder.mkdir(parents=True, exist_ok=True)
        self.vec_file, self.index_file = folder / "vectors.f32", folder / "index.jsonl"
        repair_tail(self.index_file)
        rows = {r["hash"]: r["row"] for r in iter_jsonl(self.index_file)} if self.index_file.is_file() else {}
        n_vec = self.vec_file.stat().st_size // (4 * dim) if self.vec_file.is_file() else 0
        self.rows = {h: r for h, r in rows.items() if r < n_vec}  # an index line whose vector was lost is dropped
        self.n = n_vec

    def load(self) -> np.ndarray:
        if not self.n:
            return np.zeros((0, self.dim), np.float32)
        return np.fromfile(self.vec_file, dtype=np.float32, count=self.n * self.dim).reshape(self.n, self.dim)

    def add(self, hashes: list[str], vectors: np.ndarray) -> None:
        """Vectors first (fsync'ed), then the index lines pointing at them: a kill never leaves a dangling index."""
        with naming_path(self.vec_file), self.vec_file.open("ab") as fh:
            fh.truncate(self.n * 4 * self.dim)  # drop a partial vector from an interrupted write
            fh.seek(self.n * 4 * self.dim)
            fh.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        with JsonlAppender(self.index_file) as idx:
            for i, h in enumerate(hashes):
                self.rows[h] = self.n + i
                idx.write({"hash": h, "row": self.n + i})
        self.n += len(hashes)


@dataclass
class EmbedResult:
    records: int
    unique_texts: int
    encoded: int  # texts actually run through the encoder this time
    matrix: Path
    dim: int
    quarantined: int  # pool lines refused at load: paths that could not be embedded
    capped: int  # distinct texts cut to the encoder's character bound before tokenizing
    max_chars: int


def check_embeddable(cfg: EmbedConfig, report: LoadReport[PathRecord], embeddable: int) -> None:
    """Refuse, before the encoder loads, a pool where too few paths can be embedded: an empty
    matrix, or one silently missing quarantined paths, must not look like a finished stage."""
    quarantined = len(report.rejected)
    if not embeddable:
        raise ValueError(f"{cfg.pool}: nothing to embed: {len(report.records)} records, none with a response; "
                         f"{quarantined} lines quarantined")
    share = embeddable / (embeddable + quarantined)
    if share < cfg.min_embedded_share:
        raise ValueError(f"{cfg.pool}: only {embeddable} of {embeddable + quarantined} paths can be embedded "
                         f"({share:.0%}; {quarantined} lines quarantined to {report.quarantine}), below "
                         f"min_embedded_share {cfg.min_embedded_share:.0%}: fix those lines or lower the share")


def run_embed(cfg: EmbedConfig, encoder: Encoder | None = None, progress: bool = True) -> EmbedResult:
    report = load_pool(cfg.pool)
    records = [r for r in report.records if r.ok]
    check_embeddable(cfg, report, len(records))
    encoder = encoder or Encoder(cfg.encoder, cfg.device, cfg.max_seq_length, cfg.normalize)
    slug = encoder_slug(cfg.encoder) + ("-norm" if cfg.normalize else "") + (f"-len{cfg.max_seq_length}" if cfg.max_seq_length else "")
    cache = VectorCache((cfg.cache_dir or cfg.out.parent / "embed_cache") / slug, encoder.dim)

    order: dict[str, str] = {}  # hash -> text, distinct texts in pool order
    for r in records:
        order.setdefault(text_hash(r.response), r.response)
    missing = [h for h in order if h not in cache.rows]
    bar = tqdm(total=len(missing), desc="embed", unit="path", disable=not progress, dynamic_ncols=True)
    step = cfg.batch_size * 8  # persist every few batches: a kill keeps what was encoded
    for i in range(0, len(missing), step):
        chunk = missing[i : i + step]
        cache.add(chunk, encoder.encode([order[h] for h in chunk], cfg.batch_size))
        bar.update(len(chunk))
    bar.close()

    vectors = cache.load()
    hashes = list(order)
    matrix = vectors[[cache.rows[h] for h in hashes]] if hashes else np.zeros((0, encoder.dim), np.float32)
    mpath = matrix_path(cfg.out)
    mpath.parent.mkdir(parents=True, exist_ok=True)
    tmp = mpath.with_name(mpath.stem + ".tmp.npy")
    with naming_path(tmp):
        np.save(tmp, matrix.astype(np.float32))
    os.replace(tmp, mpath)
    row_of = {h: i for i, h in enumerate(hashes)}
    rel = os.path.relpath(mpath, cfg.out.parent)
    for r in records:
        h = text_hash(r.response)
        r.embedding = EmbeddingRef(file=rel, row=row_of[h], text_hash=h)
    write_pool(cfg.out, records)
    meta = {"encoder": cfg.encoder, "dim": encoder.dim, "rows": len(hashes), "normalize": cfg.normalize}
    mpath.with_name(mpath.stem + ".json").write_text(json.dumps(meta, indent=1))
    capped = sum(len(t) > encoder.max_chars for t in order.values())
    return EmbedResult(len(records), len(hashes), len(missing), mpath, encoder.dim,
                       quarantined=len(report.rejected), capped=capped, max_chars=encoder.max_chars)


def print_result(res: EmbedResult, out: Path) -> None:
    print(f"embedded {res.records} paths ({res.unique_texts} distinct texts, {res.encoded} encoded now, "
          f"{res.unique_texts - res.encoded} from cache) -> {res.matrix} [{res.unique_texts} x {res.dim}] ; pool: {out}",
          file=sys.stderr)
    if res.capped:
        print(f"  {res.capped} texts longer than {res.max_chars} characters were cut there before encoding "
              "(the encoder reads only its max_seq_length tokens)", file=sys.stderr)
    if res.quarantined:
        print(f"  {res.quarantined} pool lines were refused and not embedded (see the quarantine file above; "
              "allowed by min_embedded_share)", file=sys.stderr)
