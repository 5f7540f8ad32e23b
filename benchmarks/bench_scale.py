"""Pipeline stages at pool scale: time, CPU-s and peak RSS per stage against each stage's bound.

Builds synthetic pools of realistic paths (about 1.5 KB per record, valid for the synthetic task,
two samples per style, one answer in twelve wrong so the filter drops something) at each N, then runs
every stage in its own subprocess, which measures itself after its imports (getrusage for CPU,
/proc VmHWM for peak RSS, which includes the interpreter and imports; ``base_MiB`` is that peak
after the imports, before the stage's work):

- ``filter``: ``run_filter`` with judge backend none (step 1 only); bound: read + extractor.
- ``embed``: ``run_embed`` with a hash stub encoder, so the time is what embed does outside the
  encoder (the stub's own time is subtracted); bound: read (and ``embed-minilm`` against the encoder).
- ``routing``: the report's ``final_routing`` + ``routing_cells`` over a run whose router reads the
  embedded pool (torch and the router imported before the clock); bound: read.
- ``scoring``: eval's ``teacher_split`` over the generated pool, no test question in it (extracts
  every answer and summarizes the training pool's paths); bound: read + extractor.
- ``prepare``: the training data built once per node (local rank 0: ``ensure_prepared``) for two
  tiny students (byte-level BPE with a chat template, Unigram; trained here, vocabulary 2000) over
  the embedded pool, router on; bound: ``tokenize``.
- ``rank2``: a second rank of the node once the data is built: ``TrainData`` maps it (the pool's
  hash included) and the first batch is collated for both students; no bound (the goal is seconds).
- bounds, measured in the same run: ``parse`` (json.loads of every line, nothing kept), ``read``
  (the pool reader every stage shares, ``PoolStream``: parse and schema checks, nothing kept; the
  floor of a stage that must not trust its input; ``read-filtered`` and ``read-embedded`` read
  the filter's and embed's outputs, which embed and routing read), ``extract``
  (the task's extractor + is_correct on responses already in memory), ``tokenize`` (each
  student's tokenizer, its batched call with offsets over prompt + path in chunks of 1024, the
  texts already in memory), ``encoder`` (all-MiniLM-L6-v2
  on ``--encoder-n`` texts, beside ``embed-minilm``, the whole embed stage on the same texts).

Exponents are fitted over the measured N (log-log least squares); 1M is run with ``--million``,
otherwise extrapolated from the largest N with the fitted exponent (rows marked ``extrapolated``).
Memory is extrapolated on the growth above ``base_MiB``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import base_argparser, claim_results, markdown_table, plot_bars, save_results

HERE = Path(__file__).resolve()
STUDENTS = ("a", "b")
DIM = 384  # what the default encoder gives, so the matrix is the size a real run writes
PAD = ("Reading the question again, {step}. Each operation changes the count by the amount stated, "
       "and nothing else in the story adds or removes any of them. ")


def write_pool(path: Path, n: int, seed: int = 0) -> int:
    """``n`` generated-pool records (answer/correct not yet set), written line by line."""
    from qr_ds.data.styles import DEFAULT_TEMPLATES, STYLES
    from qr_ds.tasks import generate_synthetic, get_task
    from qr_ds.tasks.synthetic import solve_steps

    task, samples = get_task("synthetic"), 2
    per_q = len(STYLES) * samples
    written = 0
    with path.open("w", encoding="utf-8") as fh:
        for ex in generate_synthetic(-(-n // per_q), seed):
            steps = solve_steps(ex)
            for style in STYLES:
                for k in range(samples):
                    if written == n:
                        return written
                    wrong = k == 1 and style == STYLES[written // per_q % len(STYLES)]
                    final = ex if not wrong else type(ex)(**{**ex.__dict__, "gold": str(int(ex.gold) + 1)})
                    pad = "".join(PAD.format(step=f"{e} = {v}") for e, v in steps)
                    while len(pad) < 450:
                        pad += PAD.format(step=f"attempt {k} checks it once more")
                    rec = {"id": f"{ex.id}/{style}/{k}", "task": "synthetic", "question_id": ex.id,
                           "question": ex.question, "gold": ex.gold, "teacher": "scripted-teacher",
                           "style": style, "sample": k,
                           "prompt": DEFAULT_TEMPLATES[style].format(question=ex.question),
                           "response": pad + task.render_final(final, style), "error": None,
                           "sampling": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 512, "seed": 0},
                           "level": ex.level, "answer": None, "correct": None, "judge": None, "embedding": None,
                           "meta": {"choices": None, "example_meta": {}, "tokens_in": 120, "tokens_out": 260,
                                    "tries": 1, "finish_reason": "stop"}, "schema": "qr_ds.path/1"}
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    written += 1
    return written


class StubEncoder:
    """Deterministic vectors from the text's hash: embed's own work, without a model's."""

    dim, max_chars = DIM, sys.maxsize

    def __init__(self):
        self.calls, self.seconds = 0, 0.0

    def encode(self, texts: list[str], batch_size: int):
        import numpy as np

        t = time.perf_counter()
        raw = b"".join(hashlib.sha256(s.encode()).digest() * (DIM // 32) for s in texts)
        out = np.frombuffer(raw, np.uint8).reshape(len(texts), DIM).astype(np.float32) / 255.0
        self.calls += len(texts)
        self.seconds += time.perf_counter() - t
        return out


def make_run(root: Path, pool: Path) -> Path:
    """A run folder as the trainer leaves it: config, one checkpoint with a router, 'latest'."""
    import torch
    import yaml

    from qr_ds.config import from_dict, to_dict
    from qr_ds.routing.policy import RoutingPolicy
    from qr_ds.run_layout import RunDir
    from qr_ds.train.config import TrainConfig

    cfg = from_dict(TrainConfig, {"students": [{"name": s, "model": str(root / s)} for s in STUDENTS],
                                  "data": {"pool": str(pool)}, "seed": 0, "max_steps": 1, "output_dir": str(root)})
    layout = RunDir(root)
    root.mkdir(parents=True, exist_ok=True)
    layout.config.write_text(yaml.safe_dump(to_dict(cfg)))
    ckpt = layout.checkpoint(1)
    ckpt.path.mkdir(parents=True, exist_ok=True)
    policy = RoutingPolicy(cfg.router, DIM, len(STUDENTS), cfg.lambda1, 0, pool_sample=torch.randn(64, DIM))
    torch.save(policy.state_dict(), ckpt.component("router"))
    ckpt.meta.write_text(json.dumps({"step": 1, "students": [{"name": s, "model": "m"} for s in STUDENTS]}))
    layout.set_latest(ckpt)
    return root


def make_tokenizers(root: Path, pool: Path) -> None:
    """The two students' tokenizers, trained on the first 3000 paths of ``pool``."""
    from qr_ds.tiny import train_tokenizer

    text = [t for obj, resp in _responses(pool, 3000) for t in (obj["question"], resp)]
    for name, kind in zip(STUDENTS, ("llama-bpe", "gemma-unigram")):
        tok = train_tokenizer(kind, text, 2000)
        if name == "a":  # real students render a chat template per path
            tok.chat_template = "{{ bos_token }}<|user|>\n{{ messages[0]['content'] }}\n<|assistant|>\n"
        tok.save_pretrained(root / f"tok-{name}")


def _tokenizers(root: Path) -> list:
    from transformers import AutoTokenizer

    return [AutoTokenizer.from_pretrained(root / f"tok-{s}") for s in STUDENTS]


def _train_config(d: Path):
    from qr_ds.config import from_dict
    from qr_ds.train.config import TrainConfig

    return from_dict(TrainConfig, {
        "students": [{"name": s, "model": str(d / s), "tokenizer": str(d.parent / f"tok-{s}")} for s in STUDENTS],
        "data": {"pool": str(d / "embedded.jsonl"), "max_len": 512}, "router": {"enabled": True},
        "seed": 0, "max_steps": 1, "output_dir": str(d / "train")})


# ---- child side: one stage, measured from inside after its imports

def _rusage() -> tuple[float, float]:
    """CPU seconds, and this process's peak RSS in MiB. Not ru_maxrss: exec keeps the hiwater of the
    process that spawned it, so a child would report its parent's peak."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    status = Path("/proc/self/status").read_text()
    return ru.ru_utime + ru.ru_stime, int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def _responses(pool: Path, limit: int | None = None) -> list[tuple[dict, str]]:
    out = []
    with pool.open(encoding="utf-8") as fh:
        for line in fh:
            if limit is not None and len(out) == limit:
                break
            obj = json.loads(line)
            out.append(({k: obj[k] for k in ("question_id", "question", "gold", "level")}, obj["response"]))
    return out


def child(stage: str, d: Path) -> dict:
    """Run ``stage`` over the pools in ``d``; returns wall/CPU seconds and RSS (MiB)."""
    prepared, extra = None, {}
    if stage == "filter":
        from qr_ds.config import from_dict
        from qr_ds.filter.config import FilterConfig
        from qr_ds.filter.run import run_filter

        cfg = from_dict(FilterConfig, {"pool": str(d / "pool.jsonl"), "out": str(d / "filtered.jsonl"),
                                       "judge": {"backend": "none"}})
        work = lambda: run_filter(cfg, progress=False)
    elif stage in ("embed", "embed-minilm"):
        from qr_ds.config import from_dict
        from qr_ds.embed.config import EmbedConfig
        from qr_ds.embed.run import run_embed

        small = stage == "embed-minilm"
        name = "minilm" if small else "embedded"
        cfg = from_dict(EmbedConfig, {"pool": str(d / ("enc-pool.jsonl" if small else "filtered.jsonl")),
                                      "out": str(d / f"{name}.jsonl"), "cache_dir": str(d / f"cache-{name}")})
        if small:
            from qr_ds.embed.encoder import Encoder

            enc = Encoder("default")
        else:
            enc = StubEncoder()
        work = lambda: run_embed(cfg, encoder=enc, progress=False)
    elif stage == "routing":
        import torch  # noqa: F401  (imported before the clock starts: the report imports it lazily)

        from qr_ds.report.runs import final_routing, routing_cells
        from qr_ds.routing.policy import RoutingPolicy  # noqa: F401

        def work():
            r = final_routing(d / "run")
            return routing_cells(r, "styles"), routing_cells(r, "levels")
    elif stage == "scoring":
        from qr_ds.eval.run import teacher_split

        work = lambda: teacher_split(d / "pool.jsonl", {"synthetic": []})
    elif stage in ("prepare", "rank2"):
        from qr_ds.train.prepared import ensure_prepared

        cfg, toks = _train_config(d), _tokenizers(d.parent)
        if stage == "prepare":
            shutil.rmtree(d / "train", ignore_errors=True)
            work = lambda: ensure_prepared(cfg, toks, log=lambda m: None)
        else:
            from qr_ds.train.data import TrainData, collate

            os.environ["LOCAL_RANK"] = os.environ["RANK"] = "1"

            def work():
                data = TrainData(cfg, toks, log=lambda m: None)
                first = data.epoch_batches(0, 8)[0]
                return [collate([v[int(i)] for i in first], 0, "cpu") for v in data.encoded]
    elif stage == "tokenize":
        from qr_ds.data.format import render_prompt
        from qr_ds.tasks import get_task

        instruction = get_task("synthetic").instruction
        rows = _responses(d / "pool.jsonl")
        toks = _tokenizers(d.parent)
        texts = [[render_prompt(tok, obj["question"], instruction) + resp + tok.eos_token for obj, resp in rows]
                 for tok in toks]

        def work():
            for tok, t in zip(toks, texts):
                for lo in range(0, len(t), 1024):
                    tok(t[lo: lo + 1024], return_offsets_mapping=True)
    elif stage in READS:
        from qr_ds.data.pool import PoolStream

        def work():
            for _ in PoolStream(d / READS[stage], log=lambda m: None):
                pass
    elif stage == "parse":
        def work():
            with (d / "pool.jsonl").open(encoding="utf-8") as fh:
                for line in fh:
                    json.loads(line)
    elif stage == "extract":
        from qr_ds.tasks import Example, get_task

        task = get_task("synthetic")
        prepared = [(Example(id=e["question_id"], task="synthetic", question=e["question"], gold=e["gold"],
                             level=e["level"]), resp) for e, resp in _responses(d / "pool.jsonl")]

        def work():
            for ex, resp in prepared:
                task.is_correct(task.extract(resp, ex), ex)
    elif stage == "encoder":
        from qr_ds.embed.encoder import Encoder

        enc = Encoder("default")
        texts = [resp for _, resp in _responses(d / "enc-pool.jsonl")]
        work = lambda: enc.encode(texts, 64)
    else:
        raise SystemExit(f"unknown stage {stage!r}")
    cpu0, rss0 = _rusage()
    t0 = time.perf_counter()
    work()
    wall = time.perf_counter() - t0
    cpu1, rss1 = _rusage()
    if stage == "embed":  # what embed does outside the encoder: the stub's time is not embed's
        wall, cpu1 = wall - enc.seconds, cpu1 - enc.seconds
        extra["stub_encoder_s"] = round(enc.seconds, 3)
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu1 - cpu0, 3), "rss_MiB": round(rss1, 1),
            "base_MiB": round(rss0, 1), **extra}


# ---- parent side

def run_stage(stage: str, d: Path, timeout: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE.parents[1])]))
    cmd = [sys.executable, str(HERE), "--child", stage, "--dir", str(d)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode:
        raise RuntimeError(f"stage {stage} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


READS = {"read": "pool.jsonl", "read-filtered": "filtered.jsonl", "read-embedded": "embedded.jsonl"}
BOUND = {"filter": ("read", "extract"), "embed": ("read-filtered",), "routing": ("read-embedded",),
         "scoring": ("read", "extract"), "embed-minilm": ("encoder",), "prepare": ("tokenize",)}


def fit_exponent(points: list[tuple[int, float]]) -> float | None:
    pts = [(math.log(n), math.log(v)) for n, v in points if v > 0]
    if len(pts) < 2:
        return None
    mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else None


def summarize(measured: dict[int, dict[str, dict]], target: int) -> list[dict]:
    rows = []
    ns = sorted(measured)
    for stage in ("prepare", "rank2", "filter", "embed", "routing", "scoring", "parse", *READS, "extract", "tokenize"):
        pts = [(n, measured[n][stage]) for n in ns if stage in measured[n]]
        if not pts:
            continue
        t_exp = fit_exponent([(n, m["cpu_s"]) for n, m in pts])
        m_exp = fit_exponent([(n, max(m["rss_MiB"] - m["base_MiB"], 1e-3)) for n, m in pts])
        for n, m in pts:
            bounds = BOUND.get(stage, ())
            bound = sum(measured[n][b]["cpu_s"] for b in bounds) if all(b in measured[n] for b in bounds) else 0
            rows.append({"stage": stage, "N": n, "wall_s": m["wall_s"], "cpu_s": m["cpu_s"], "rss_MiB": m["rss_MiB"],
                         "growth_MiB": round(m["rss_MiB"] - m["base_MiB"], 1),
                         "bound": "+".join(BOUND.get(stage, ())) or "-", "bound_cpu_s": round(bound, 3) if bound else None,
                         "ratio": round(m["cpu_s"] / bound, 2) if bound else None,
                         "time_exp": round(t_exp, 2) if t_exp is not None else None,
                         "mem_exp": round(m_exp, 2) if m_exp is not None else None, "kind": "measured"})
        n_max, last = pts[-1]
        if target > n_max and t_exp is not None:
            scale = target / n_max
            growth = max(last["rss_MiB"] - last["base_MiB"], 0.0) * scale ** (m_exp or 1.0)
            rows.append({"stage": stage, "N": target, "wall_s": round(last["wall_s"] * scale ** t_exp, 1),
                         "cpu_s": round(last["cpu_s"] * scale ** t_exp, 1),
                         "rss_MiB": round(last["base_MiB"] + growth, 1), "growth_MiB": round(growth, 1),
                         "bound": rows[-1]["bound"], "bound_cpu_s": None, "ratio": None,
                         "time_exp": rows[-1]["time_exp"], "mem_exp": rows[-1]["mem_exp"], "kind": "extrapolated"})
    return rows


def main() -> None:
    p = base_argparser(__doc__.splitlines()[0], "scale")
    p.add_argument("--n", type=int, nargs="+", default=None,
                   help="pool sizes to measure (default 10k and 100k; --size toy: 1k and 10k)")
    p.add_argument("--million", action="store_true", help="also measure N=1,000,000 (else it is extrapolated)")
    p.add_argument("--encoder-n", type=int, default=300, help="texts for the encoder bound and embed-minilm")
    p.add_argument("--stages", nargs="+", default=["parse", "read", "extract", "tokenize", "filter", "read-filtered",
                                                     "embed", "read-embedded", "prepare", "rank2", "routing", "scoring"])
    p.add_argument("--work", type=Path, default=None, help="folder for the pools (default: a temp folder, removed)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per stage")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.dir)))
        return
    claim_results(args)

    ns = args.n or ([1_000, 10_000] if args.size == "toy" else [10_000, 100_000])
    ns = sorted(set(ns) | ({1_000_000} if args.million else set()))
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="bench_scale-")
    work = args.work or Path(tmp.name)
    measured: dict[int, dict[str, dict]] = {}
    encoder_rows = {}
    try:
        for n in ns:
            d = work / f"n{n}"
            d.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            write_pool(d / "pool.jsonl", n)
            print(f"N={n}: pool {(d / 'pool.jsonl').stat().st_size / n:.0f} B/path, built in "
                  f"{time.perf_counter() - t:.1f} s", file=sys.stderr)
            measured[n] = {}
            if not (work / "tok-a").is_dir():
                make_tokenizers(work, d / "pool.jsonl")
            for stage in args.stages:
                if stage == "routing":
                    make_run(d / "run", d / "embedded.jsonl")
                measured[n][stage] = run_stage(stage, d, args.timeout)
                print(f"  {stage}: {measured[n][stage]}", file=sys.stderr)
            for name in ("filtered", "embedded"):  # keep the disk for the next N
                for f in d.glob(f"{name}*"):
                    f.unlink()
            shutil.rmtree(d / "train", ignore_errors=True)
        if args.encoder_n:
            d = work / "encoder"
            d.mkdir(parents=True, exist_ok=True)
            write_pool(d / "enc-pool.jsonl", args.encoder_n)
            for stage in ("encoder", "embed-minilm"):
                encoder_rows[stage] = run_stage(stage, d, args.timeout)
                print(f"  {stage} (N={args.encoder_n}): {encoder_rows[stage]}", file=sys.stderr)
    finally:
        if tmp:
            tmp.cleanup()

    rows = summarize(measured, 1_000_000)
    cols = ["stage", "N", "kind", "wall_s", "cpu_s", "rss_MiB", "growth_MiB", "bound", "bound_cpu_s", "ratio",
            "time_exp", "mem_exp"]
    print(markdown_table(rows, cols))
    enc = None
    if encoder_rows:
        e, m = encoder_rows["encoder"], encoder_rows["embed-minilm"]
        enc = {"N": args.encoder_n, "encoder_cpu_s": e["cpu_s"], "encoder_wall_s": e["wall_s"],
               "embed_minilm_cpu_s": m["cpu_s"], "embed_minilm_wall_s": m["wall_s"],
               "ratio": round(m["cpu_s"] / e["cpu_s"], 2) if e["cpu_s"] else None,
               "encoder_rss_MiB": e["rss_MiB"], "embed_minilm_rss_MiB": m["rss_MiB"]}
        print(f"\nembed with all-MiniLM-L6-v2 at N={args.encoder_n}: {m['cpu_s']:.1f} CPU-s vs the bare encoder "
              f"{e['cpu_s']:.1f} CPU-s (ratio {enc['ratio']})")
    path = save_results(args.name, rows, {"measured": {str(n): v for n, v in measured.items()}, "encoder": enc,
                                          "note": "wall/CPU seconds and RSS measured inside each stage's subprocess "
                                                  "after its imports; one thread; nice 19 beside other jobs"},
                        out_dir=args.out)
    print(f"wrote {path}")
    if args.plot:
        top = [r for r in rows if r["N"] == max(ns) and r["kind"] == "measured"]
        print(f"wrote {plot_bars(path.with_suffix('.png'), top, 'stage', 'cpu_s', f'CPU-s per stage at N={max(ns)}')}")


if __name__ == "__main__":
    main()
