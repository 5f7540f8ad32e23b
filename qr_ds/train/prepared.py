"""Training data prepared once per node and memory-mapped by every rank.

The selected paths, tokenized and aligned for every student, go into flat arrays (one token array
per student plus an offsets index, like Megatron's indexed dataset) in a folder named by a content
hash of what decides them: the pool's bytes, each tokenizer, each student's ``max_len``, the span
count and the data selection. Local rank 0 of each node builds it under a file lock into a
temporary folder and renames it into place; the other ranks wait for it with a progress line and
no collective timeout (a build of a large pool takes minutes). A resumed run finds the same hash
and maps the folder again; a changed pool or tokenizer gets a new folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from filelock import FileLock, Timeout

from qr_ds.data.baselines import TRAIN_TASKS
from qr_ds.data.jsonl import hash_file
from qr_ds.data.pool import PoolStream
from qr_ds.distributed.health import launch_id
from qr_ds.distributed.topology import local_rank
from qr_ds.embed.lookup import gather_embeddings
from qr_ds.train.config import TrainConfig
from qr_ds.train.encoding import ChunkEncoder, Encoded, chunked, cut_states_wrong_answer, selected, task_of

VERSION = 5  # bump when the folder's layout, the encoding or the cut check (cut_wrong) changes: old folders are then not reused
DONE = "meta.json"  # written last: a folder holding it is complete
PATH_IDS = "path_ids.jsonl"  # each path's pool id, a JSON string a line (ids may hold any character)
ENV_DIR = "QR_DS_PREPARED_DIR"  # a cache shared by runs (or by nodes, on a shared filesystem)


def prepared_root(cfg: TrainConfig) -> Path:
    """``data.prepared_dir``, else $QR_DS_PREPARED_DIR, else the run's own folder."""
    return Path(cfg.data.prepared_dir or os.environ.get(ENV_DIR) or cfg.run.prepared)


def older_for_pool(root: Path, key: str, pool: Path) -> list[tuple[Path, int]]:
    """Complete prepared folders under ``root`` for the same pool file but another key (another pool
    content, tokenizer or max_len), with their sizes in bytes: nothing deletes them, since a run that
    trained on them resumes from them, so the builder names them."""
    found = []
    for meta in root.glob(f"*/{DONE}"):
        folder = meta.parent
        if folder.name == key or ".tmp-" in folder.name:
            continue
        try:
            same = Path(json.loads(meta.read_text()).get("pool", "")).resolve() == pool.resolve()
        except (OSError, ValueError):
            continue
        if same:
            found.append((folder, sum(f.stat().st_size for f in folder.iterdir() if f.is_file())))
    return sorted(found)


def tokenizer_fingerprint(tok) -> str:
    """What decides a tokenizer's ids and offsets: its serialized pipeline and vocabulary, the chat
    template and the special tokens (the same files under another path give the same key)."""
    backend = getattr(tok, "backend_tokenizer", None)
    parts = [backend.to_str() if backend is not None else repr(tok.get_vocab()),
             str(getattr(tok, "chat_template", None)), json.dumps(tok.special_tokens_map, sort_keys=True, default=str)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def data_key(cfg: TrainConfig, tokenizers: list) -> str:
    h = hashlib.sha256()
    settings = {"version": VERSION, "max_len": [cfg.max_len_of(s) for s in range(len(cfg.students))],
                "max_spans": cfg.mutual.max_spans, "quality_filter": cfg.data.quality_filter,
                "paths_per_question": cfg.data.paths_per_question, "limit": cfg.data.limit,
                "embeddings": cfg.router.enabled, "question_fraction": cfg.data.question_fraction,
                "question_seed": cfg.data.question_seed, "objective": cfg.data.objective,
                "prefixes": {t: v.prefix for t, v in TRAIN_TASKS.items()}}
    h.update(json.dumps(settings, sort_keys=True).encode())
    pool = Path(cfg.data.pool)
    if not pool.is_file():
        raise FileNotFoundError(f"data.pool: {pool} not found")
    hash_file(pool, h)
    for tok in tokenizers:
        h.update(tokenizer_fingerprint(tok).encode())
    if cfg.router.enabled:  # matrices beside the pool: by size and time, not bytes (they are large)
        for m in sorted(pool.resolve().parent.glob("*.npy")):
            st = m.stat()
            h.update(f"{m.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


# -- building -----------------------------------------------------------------------------------

def _whoami() -> str:
    return f"{socket.gethostname()} rank {os.environ.get('RANK', '0')} (pid {os.getpid()})"


def _count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 23):
            n += block.count(b"\n")
    return n


class _Columns:
    """Per-path arrays filled a chunk at a time (the path count is known only at the end)."""

    def __init__(self, dtypes: dict[str, type]):
        self.dtypes, self.parts = dtypes, {k: [] for k in dtypes}

    def add(self, **cols) -> None:
        for k, v in cols.items():
            self.parts[k].append(np.asarray(v, self.dtypes[k]))

    def save(self, folder: Path, suffix: str = "") -> None:
        for k, parts in self.parts.items():
            np.save(folder / f"{k}{suffix}.npy", np.concatenate(parts) if parts else np.zeros(0, self.dtypes[k]))


def build(cfg: TrainConfig, tokenizers: list, folder: Path, log: Callable[[str], None],
          progress: Callable = lambda it, **kw: it, chunk: int = 1024) -> None:
    """Write the prepared folder for ``cfg`` into a temporary sibling, renamed into place when whole.
    The pool is streamed a chunk at a time: memory holds one chunk and the per-path columns."""
    tmp = folder.with_name(f"{folder.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pool = Path(cfg.data.pool)
    S = len(tokenizers)
    lens = [cfg.max_len_of(s) for s in range(S)]
    span_dtype = np.int16 if cfg.mutual.max_spans < 2 ** 15 else np.int32
    qids: dict[str, int] = {}
    styles: dict[str, int] = {}
    levels: dict[str | None, int] = {}
    tasks: dict[str, int] = {}
    paths = _Columns({"question_index": np.int64, "response_chars": np.float32, "n_spans": np.int32,
                      "style": np.int32, "level": np.int32, "train_task": np.int32})
    students = [_Columns({"truncated": np.int8, "unseen_chars": np.int64, "cut_wrong": np.int8,
                          "response_tokens": np.int64, "lengths": np.int64}) for _ in range(S)]
    dtypes = {"ids": np.int32, "is_label": np.int8, "span": span_dtype}
    files = [{k: open(tmp / f"{k}_{s}.bin", "wb") for k in dtypes} for s in range(S)]
    emb_file, emb_dim = (open(tmp / "embeddings.bin", "wb"), 0) if cfg.router.enabled else (None, 0)
    id_file = open(tmp / PATH_IDS, "w", encoding="utf-8")  # what router.withhold names paths by
    encode = ChunkEncoder(tokenizers, lens, cfg.mutual.max_spans)
    progress_file = folder.with_name(folder.name + ".progress")
    t0, n = time.time(), 0
    stream = progress(PoolStream(pool, log=log), total=_count_lines(pool), desc="tokenize+align", unit="line")
    try:
        for part in chunked(selected(cfg, stream), chunk):
            recs = [r for _, r in part]
            if emb_file is not None:  # checked: inside the pool's folder, row in range, computed from this text
                rows = gather_embeddings(pool, recs, {r.id: line for line, r in part})
                if emb_dim and rows.shape[1] != emb_dim:
                    raise ValueError(f"{pool}: embeddings of width {rows.shape[1]} after width {emb_dim}")
                emb_dim = rows.shape[1]
                rows.astype(np.float32, copy=False).tofile(emb_file)
            encoded = encode(recs)
            id_file.writelines(json.dumps(r.id) + "\n" for r in recs)
            paths.add(question_index=[qids.setdefault(r.question_id, len(qids)) for r in recs],
                      response_chars=[max(len(r.response), 1) for r in recs], n_spans=[k for _, k in encoded],
                      style=[styles.setdefault(r.style, len(styles)) for r in recs],
                      level=[levels.setdefault(r.level, len(levels)) for r in recs],
                      train_task=[tasks.setdefault(task_of(r), len(tasks)) for r in recs])
            for s in range(S):
                encs = [e[s] for e, _ in encoded]
                for k, field in (("ids", "input_ids"), ("is_label", "is_label"), ("span", "span_ids")):
                    np.concatenate([getattr(e, field) for e in encs]).astype(dtypes[k], copy=False).tofile(files[s][k])
                students[s].add(truncated=[e.truncated for e in encs], unseen_chars=[e.unseen_chars for e in encs],
                                cut_wrong=[cfg.data.quality_filter and cut_states_wrong_answer(r, e.unseen_chars)
                                           for r, e in zip(recs, encs)],
                                response_tokens=[np.count_nonzero(e.is_label[1:]) for e in encs],
                                lengths=[len(e.input_ids) for e in encs])
            n += len(part)
            progress_file.write_text(f"{n} paths after {time.time() - t0:.0f} s, by {_whoami()}")
    finally:
        for f in [*(f for fs in files for f in fs.values()), *([emb_file] if emb_file else []), id_file]:
            f.close()
    paths.save(tmp)
    for s, cols in enumerate(students):
        lengths = np.concatenate(cols.parts.pop("lengths"))
        np.save(tmp / f"offsets_{s}.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        cols.save(tmp, f"_{s}")
    meta = {"version": VERSION, "n_paths": n, "n_questions": len(qids), "students": S, "max_len": lens,
            "span_dtype": np.dtype(span_dtype).name, "embedding_dim": int(emb_dim), "styles": list(styles),
            "levels": list(levels), "train_tasks": list(tasks), "pool": str(pool.resolve()), "built_by": _whoami(),
            "build_s": round(time.time() - t0, 1)}
    with open(tmp / DONE, "w") as fh:
        json.dump(meta, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, folder)
    progress_file.unlink(missing_ok=True)


@contextmanager
def _file_lock(path: Path, on_wait: Callable[[], None]):
    """filelock's flock, which also falls back to a marker file where the filesystem has no flock."""
    lock = FileLock(path)
    try:
        lock.acquire(blocking=False)
    except Timeout:  # another node's builder, on a shared filesystem
        on_wait()
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def ensure_prepared(cfg: TrainConfig, tokenizers: list, log: Callable[[str], None],
                    progress: Callable = lambda it, **kw: it, poll_s: float = 0.5, say_every_s: float = 30.0) -> Path:
    """The prepared folder for ``cfg``: reused when its hash matches, else built by local rank 0
    while this node's other ranks wait (with no timeout: a failed build leaves a marker that ends them)."""
    root = prepared_root(cfg)
    root.mkdir(parents=True, exist_ok=True)
    key = data_key(cfg, tokenizers)
    folder = root / key
    failed = root / f"{key}.failed"
    if (folder / DONE).is_file():
        log(f"prepared training data reused: {folder}")
        return folder
    if local_rank() == 0:
        with _file_lock(root / f"{key}.lock", lambda: log(f"waiting for another node's build of {folder}")):
            if (folder / DONE).is_file():
                log(f"prepared training data reused: {folder}")
                return folder
            failed.unlink(missing_ok=True)
            log(f"preparing training data once for this node: {folder}")
            try:
                build(cfg, tokenizers, folder, log, progress)
            except BaseException as e:
                failed.write_text(f"{launch_id()}\n{_whoami()}: {type(e).__name__}: {e}")
                raise
            if older := older_for_pool(root, key, Path(cfg.data.pool)):
                log(f"{len(older)} older prepared folder(s) for {cfg.data.pool} kept beside it "
                    f"({sum(b for _, b in older) / 2**20:.1f} MiB; delete them once no run resumes from them): "
                    + ", ".join(f.name for f, _ in older))
        return folder
    t0 = said = time.time()
    while not (folder / DONE).is_file():
        if failed.is_file():
            owner, _, why = failed.read_text().partition("\n")
            if owner == launch_id():
                raise RuntimeError(f"preparing {folder} failed on {why}")
        if time.time() - said >= say_every_s:
            where = root / f"{key}.progress"
            done = where.read_text() if where.is_file() else "not started"
            print(f"[qr_ds] rank {os.environ.get('RANK', '0')} waiting {time.time() - t0:.0f} s for local rank 0 "
                  f"to prepare {folder}: {done}", file=sys.stderr, flush=True)
            said = time.time()
        time.sleep(poll_s)
    return folder


# -- reading ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PathInfo:
    """What the trainer's logs need of a path (its record stays in the pool file)."""

    style: str
    level: str | None
    question_index: int


class _Paths(Sequence):
    def __init__(self, p: "Prepared"):
        self.p = p

    def __len__(self) -> int:
        return self.p.n

    def __getitem__(self, i: int) -> PathInfo:
        p = self.p
        return PathInfo(p.styles[p.style[i]], p.levels[p.level[i]], int(p.question_index[i]))


class EncodedView(Sequence):
    """One student's ``Encoded`` paths, read from the mapped arrays on access."""

    def __init__(self, folder: Path, s: int, n: int, span_dtype: str):
        self.offsets = np.load(folder / f"offsets_{s}.npy", mmap_mode="r")
        total = int(self.offsets[n])
        self.ids = _map(folder / f"ids_{s}.bin", np.int32, total)
        self.is_label = _map(folder / f"is_label_{s}.bin", np.int8, total)
        self.span = _map(folder / f"span_{s}.bin", np.dtype(span_dtype), total)
        self.truncated = np.load(folder / f"truncated_{s}.npy", mmap_mode="r")
        self.unseen_chars = np.load(folder / f"unseen_chars_{s}.npy", mmap_mode="r")
        self.cut_wrong = np.load(folder / f"cut_wrong_{s}.npy", mmap_mode="r")
        self.n = n
        self.lengths = np.diff(self.offsets)  # tokens per path: counted per step without building items

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Encoded:
        if not -self.n <= i < self.n:
            raise IndexError(i)
        i %= self.n
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        ids = self.ids[a:b]
        labels = np.where(self.is_label[a:b] != 0, ids, -100)
        return Encoded(ids.tolist(), labels.tolist(), self.span[a:b].tolist(), bool(self.truncated[i]),
                       int(self.unseen_chars[i]))


def _map(path: Path, dtype, count: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


class Prepared:
    """A prepared folder, mapped: pages are read only where a rank touches them."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.meta = json.loads((folder / DONE).read_text())
        if self.meta.get("version") != VERSION:
            raise ValueError(f"{folder / DONE}: version {self.meta.get('version')!r}, this code reads {VERSION}")
        self.n = self.meta["n_paths"]
        self.styles, self.levels = self.meta["styles"], self.meta["levels"]
        for k in ("question_index", "response_chars", "n_spans", "style", "level", "train_task"):
            setattr(self, k, np.load(folder / f"{k}.npy", mmap_mode="r"))
        self.paths = _Paths(self)
        self.students = [EncodedView(folder, s, self.n, self.meta["span_dtype"]) for s in range(self.meta["students"])]
        self.response_tokens = [np.load(folder / f"response_tokens_{s}.npy") for s in range(self.meta["students"])]
        dim = self.meta["embedding_dim"]
        # copy-on-write: torch wants a writable array; pages stay shared with the file until written
        self.embeddings = (np.memmap(folder / "embeddings.bin", np.float32, mode="c", shape=(self.n, dim))
                           if dim and self.n else None)

    def path_ids(self) -> list[str]:
        """Each path's pool id, in path order: read on demand (tens of MB at a million paths)."""
        with open(self.folder / PATH_IDS, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh]
