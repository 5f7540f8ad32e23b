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
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from qr_ds.data.jsonl import JsonlAppender, iter_jsonl, iter_lines, naming_path, repair_tail
from qr_ds.data.pool import EmbeddingRef, PathRecord, PoolStream, write_pool
from qr_ds.embed.config import EmbedConfig, matrix_path
from qr_ds.embed.encoder import Encoder, encoder_slug
from qr_ds.embed.lookup import text_hash
from qr_ds.stages import output_lock


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

    def view(self) -> np.ndarray:
        """The cached vectors, memory-mapped: a cache shared by many pools is never read whole."""
        if not self.n:
            return np.zeros((0, self.dim), np.float32)
        return np.memmap(self.vec_file, dtype=np.float32, mode="r", shape=(self.n, self.dim))

    def add(self, hashes: list[str], vectors: np.ndarray) -> None:
        """Vectors first (fsync'ed), then the index lines pointing at them: a kill never leaves a dangling index."""
        with naming_path(self.vec_file), self.vec_file.open("ab") as fh:
            fh.truncate(self.n * 4 * self.dim)  # drop a partial vector from an interrupted write
            fh.seek(self.n * 4 * self.dim)
            fh.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        with JsonlAppender(self.index_file, fsync=False) as idx:
            for i, h in enumerate(hashes):
                self.rows[h] = self.n + i
                idx.write({"hash": h, "row": self.n + i})
        # one fsync per chunk, not per line (fsync syncs the file, whichever descriptor asks)
        with naming_path(self.index_file), self.index_file.open("rb") as fh:
            os.fsync(fh.fileno())
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


def check_embeddable(cfg: EmbedConfig, stream: PoolStream, embeddable: int) -> None:
    """Refuse, before the encoder loads, a pool where too few paths can be embedded: an empty
    matrix, or one silently missing quarantined paths, must not look like a finished stage."""
    quarantined = len(stream.rejected)
    if not embeddable:
        raise ValueError(f"{cfg.pool}: nothing to embed: {stream.accepted} records, none with a response; "
                         f"{quarantined} lines quarantined")
    share = embeddable / (embeddable + quarantined)
    if share < cfg.min_embedded_share:
        raise ValueError(f"{cfg.pool}: only {embeddable} of {embeddable + quarantined} paths can be embedded "
                         f"({share:.0%}; {quarantined} lines quarantined to {stream.quarantine}), below "
                         f"min_embedded_share {cfg.min_embedded_share:.0%}: fix those lines or lower the share")


@dataclass
class Rows:
    """The matrix's rows as the pool stream assigns them: one per distinct text, in pool order."""

    of: dict[str, int] = field(default_factory=dict)  # text hash -> row
    first_line: array = field(default_factory=lambda: array("q"))  # pool line holding each row's text
    chars: array = field(default_factory=lambda: array("q"))  # each row's text length
    records: int = 0

    def assign(self, lineno: int, rec: PathRecord, rel: str) -> None:
        h = text_hash(rec.response)
        row = self.of.setdefault(h, len(self.of))
        if row == len(self.first_line):
            self.first_line.append(lineno)
            self.chars.append(len(rec.response))
        rec.embedding = EmbeddingRef(file=rel, row=row, text_hash=h)
        self.records += 1


def run_embed(cfg: EmbedConfig, encoder: Encoder | None = None, progress: bool = True) -> EmbedResult:
    """Streams the pool twice and holds neither it nor its texts: the first pass assigns rows and
    writes the embedded pool aside, the second reads back only the texts the cache lacks and
    encodes them in batches into the matrix, written once into a preallocated .npy memmap."""
    folder = cfg.out.parent
    made = not folder.exists()  # a refused pool leaves no output folder behind
    try:
        with output_lock(cfg.out):  # before loading the encoder: a refused second run should cost nothing
            return _embed(cfg, encoder, progress)
    except BaseException:
        if made and folder.is_dir() and not any(folder.iterdir()):  # checked once the lock file is gone
            folder.rmdir()
        raise


def _embed(cfg: EmbedConfig, encoder: Encoder | None, progress: bool) -> EmbedResult:
    mpath = matrix_path(cfg.out)
    rel = os.path.relpath(mpath, cfg.out.parent)
    stream, rows = PoolStream(cfg.pool), Rows()

    def embedded() -> Iterator[PathRecord]:
        for lineno, rec in stream:
            if rec.ok:
                rows.assign(lineno, rec, rel)
                yield rec
        check_embeddable(cfg, stream, rows.records)  # raised here, the pool written aside is dropped

    pending = cfg.out.with_name(cfg.out.name + ".partial")
    try:
        write_pool(pending, embedded())
        encoder = encoder or Encoder(cfg.encoder, cfg.device, cfg.max_seq_length, cfg.normalize)
        encoded = _write_matrix(cfg, encoder, rows, mpath, progress)
        os.replace(pending, cfg.out)
    finally:
        pending.unlink(missing_ok=True)
    meta = {"encoder": cfg.encoder, "dim": encoder.dim, "rows": len(rows.of), "normalize": cfg.normalize}
    mpath.with_name(mpath.stem + ".json").write_text(json.dumps(meta, indent=1))
    capped = sum(n > encoder.max_chars for n in rows.chars)
    return EmbedResult(rows.records, len(rows.of), encoded, mpath, encoder.dim,
                       quarantined=len(stream.rejected), capped=capped, max_chars=encoder.max_chars)


def _write_matrix(cfg: EmbedConfig, encoder: Encoder, rows: Rows, mpath: Path, progress: bool) -> int:
    """Fill the matrix from the cache and the encoder; returns how many texts were encoded."""
    slug = encoder_slug(cfg.encoder) + ("-norm" if cfg.normalize else "") + (f"-len{cfg.max_seq_length}" if cfg.max_seq_length else "")
    cache = VectorCache((cfg.cache_dir or cfg.out.parent / "embed_cache") / slug, encoder.dim)
    tmp = mpath.with_name(mpath.stem + ".tmp.npy")
    with naming_path(tmp):
        matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(rows.of), encoder.dim))
        cached = np.array([(row, cache.rows[h]) for h, row in rows.of.items() if h in cache.rows], np.int64).reshape(-1, 2)
        vectors = cache.view()
        for i in range(0, len(cached), COPY_ROWS):
            matrix[cached[i : i + COPY_ROWS, 0]] = vectors[cached[i : i + COPY_ROWS, 1]]
        del vectors
        missing = [row for h, row in rows.of.items() if h not in cache.rows]
        bar = tqdm(total=len(missing), desc="embed", unit="path", disable=not progress, dynamic_ncols=True)
        step = cfg.batch_size * 8  # persist every few batches: a kill keeps what was encoded
        with bar:
            for chunk in _texts_of(cfg.pool, rows, missing, step):
                got = encoder.encode([t for _, _, t in chunk], cfg.batch_size)
                cache.add([h for _, h, _ in chunk], got)
                matrix[[row for row, _, _ in chunk]] = got
                bar.update(len(chunk))
        matrix.flush()
        del matrix
    os.replace(tmp, mpath)
    return len(missing)


COPY_ROWS = 65536  # cached vectors copied per fancy-indexed read


def _texts_of(pool: Path, rows: Rows, missing: list[int], step: int) -> Iterator[list[tuple[int, str, str]]]:
    """(row, hash, text) of the ``missing`` rows (ascending, so their lines are too), ``step`` at a time,
    read back from the pool."""
    want = iter(missing)
    row = next(want, None)
    chunk: list[tuple[int, str, str]] = []
    for lineno, raw in iter_lines(pool):
        if row is None:
            break
        if lineno != rows.first_line[row]:
            continue
        text = json.loads(raw)["response"]
        h = text_hash(text)
        if rows.of.get(h) != row:
            raise RuntimeError(f"{pool}:{lineno}: the line changed while embed read the file; run embed again")
        chunk.append((row, h, text))
        if len(chunk) == step:
            yield chunk
            chunk = []
        row = next(want, None)
    if chunk:
        yield chunk


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
