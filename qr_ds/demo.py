"""`qr-ds demo`: the whole pipeline on CPU with tiny students, ending in a report.

Stages: synthetic questions -> scripted stand-in teacher (six styles) -> filter (scripted judge)
-> embed (offline MiniLM) -> two tiny students of different architectures and tokenizers ->
training through the DeepSpeed launcher (full method and ablations) -> vLLM evaluation ->
report. Every stage skips work already on disk, so an interrupted demo resumes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from qr_ds.data.styles import STYLES
from qr_ds.routing.config import FIT_FORM
from qr_ds.run_layout import RunDir

ROOT = Path(__file__).resolve().parents[1]
# Qwen2 rather than Gemma beside Llama: vLLM reloads its fully fine-tuned weights in place, where
# Gemma needs a fresh engine per checkpoint (qr_ds/eval/vllm_backend.py), minutes on CPU.
STUDENT_KINDS = ("llama-bpe", "qwen-bpe")


@dataclass(frozen=True)
class Size:
    train_questions: int
    test_questions: int
    samples_per_style: int
    steps: int  # the budget: optimizer steps, the same for every method (docs/comparisons.md)
    eval_limit: int
    max_new_tokens: int


SIZES = {
    "small": Size(train_questions=24, test_questions=24, samples_per_style=1, steps=6, eval_limit=24,
                  max_new_tokens=40),
    # 448 new tokens: the longest response (420 Qwen2-student tokens) fits, so a right answer is never cut off
    "full": Size(train_questions=150, test_questions=200, samples_per_style=1, steps=450, eval_limit=200,
                 max_new_tokens=448),
}
# Training context per student (students[].max_len): 150 tokens hold every quick-style path of the
# Llama student and cut every long-style one before its answer line; 512 hold every path (474). This is
# the fixed student x style suitability the router has to find (benchmarks/probe_demo_task.py).
MAX_LEN = {"llama-bpe": 150, "qwen-bpe": 512}

# Task variants: the teacher's scripted settings. ``harm``: its backward-style paths of doubling
# questions open as a vanilla path that misreads doubling and states that wrong answer, inside the Llama
# student's 150-token context, and correct it only after a long check (qr_ds/teacher/scripted.py): a
# path that harms the short student and not the long one. ``harm_long``: the same on all three long
# styles, three times the dose: on ``harm`` the oracle's gain over w/o Route in the full method was not
# resolved at 10 seeds (+7.3 [-6.0, 20.5] points, docs/demo-study/routing-floor-prior), too weak a case
# to judge a router by.
VARIANTS = {"original": {}, "harm": {"harm_styles": ["backward"]},
            "harm_long": {"harm_styles": ["tot", "fact_retrieval", "backward"]}}
# A harm variant's training settings: its harmful paths state their wrong answer before the short
# student's cut, which data.drop_cut_wrong (on by default) keeps from that student in every arm; the
# variants exist to test whether routing finds them, so they switch it off (the `checked` arms keep it).
VARIANT_TRAIN = {"harm": {"data": {"drop_cut_wrong": False}}, "harm_long": {"data": {"drop_cut_wrong": False}}}
# method -> (report label, config overrides): the full method and the ablations of Table 2, plus SFT
# (the default set), and the routing study's arms (docs/demo-study).
RUNS = {
    "qr_distill": ("QR-Distill", {}),
    "no_filter": ("w/o QF", {"data": {"quality_filter": False}}),
    "no_route": ("w/o Route", {"router": {"enabled": False}}),
    # on a harm variant: the default filter, that keeps from a student the cut paths that state a wrong answer
    "checked": ("QR-Distill, cut paths answer-checked", {"data": {"drop_cut_wrong": True}}),
    "no_route_checked": ("w/o Route, cut paths answer-checked", {"router": {"enabled": False},
                                                                  "data": {"drop_cut_wrong": True}}),
    "no_mutual": ("w/o Collab", {"mutual": {"enabled": False}}),
    "sft_single": ("SFT (one path per question)", {"router": {"enabled": False}, "mutual": {"enabled": False},
                                                   "data": {"paths_per_question": 1}}),
    "mutual_all": ("QR-Distill, mutual on every path", {"mutual": {"paths": "all"}}),
    # the default before issue 30 (the fit signal, each student held at half the paths)
    "fit": ("QR-Distill, fit routing (rate 0.5)", {"router": dict(FIT_FORM)}),
    # the gain evidence relative to the mean of all kinds, measured all through training (a candidate)
    "gain_relative": ("QR-Distill, relative gain every epoch", {"router": {"gain_epochs": "all",
                                                                           "gain_relative": True}}),
    # the upper bound of routing on a harm variant: its harmful paths kept from the short student only
    # (the paths are the variant's: `overrides`); by style, every path of its harm styles (which also
    # drops their harmless paths: on harm_long that form gained nothing, benchmarks/README.md)
    "oracle": ("oracle routing", {}),
    "oracle_style": ("oracle routing by style", {}),
}
DEFAULT_METHODS = ("qr_distill", "no_filter", "no_route", "no_mutual", "sft_single")
STUDY = Path("docs/demo-study")  # where the committed results of `qr-ds demo --seeds 3` live


def register(sub) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on CPU with tiny students, ending in a report",
                       description=__doc__)
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--size", choices=sorted(SIZES), default="full",
                   help="small: a minute-scale smoke run (CI); full: the demo of the README")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="training seeds 0..N-1 of every method (students' init, data order, router); 1 is "
                        "the quick pass of `make demo`, 3 the study whose results are in docs/demo-study/. "
                        "Seeds already trained and evaluated in --out are reused")
    p.add_argument("--skip-eval", action="store_true", help="stop after training")
    p.add_argument("--variant", choices=sorted(VARIANTS), default="original",
                   help="harm: a style whose paths teach the short-context student a wrong rule (the routing study); "
                        "harm_long: the same on all three long styles")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated, the first is the one the others are compared with; of: {', '.join(RUNS)}")
    p.set_defaults(func=lambda a: run_demo(a.out, a.size, a.seeds, a.skip_eval, a.variant, _methods(a.methods)))


ORACLE_WITHHOLD = "oracle_withhold_llama.txt"  # in the demo's data folder: the oracle's harmful path ids


def overrides(method: str, variant: str, data: Path = Path("data")) -> dict:
    """The config overrides of ``method`` on task ``variant``: the oracles' fixed assignments are the
    variant's (the path oracle's file of harmful path ids in ``data``: ``write_oracle_withhold``)."""
    over = {key: dict(value) for key, value in VARIANT_TRAIN.get(variant, {}).items()}
    for key, value in RUNS[method][1].items():  # the method's settings win over the variant's
        over[key] = {**over.get(key, {}), **value}
    if not method.startswith("oracle"):
        return over
    harm = VARIANTS[variant].get("harm_styles", [])
    if not harm:
        raise SystemExit(f"qr-ds demo: --methods {method} keeps a variant's harmful paths from the short student; "
                         f"--variant {variant} has none (choose one of "
                         f"{', '.join(v for v in VARIANTS if VARIANTS[v].get('harm_styles'))})")
    if method == "oracle":
        return {**over, "router": {"withhold": {"llama": str(data / ORACLE_WITHHOLD)}}}
    return {**over, "router": {"fixed": {"llama": [s for s in STYLES if s not in harm]}}}


def refuse_same_training(methods: tuple[str, ...], variant: str) -> None:
    """Two methods whose training configs resolve to the same (defaults filled in) train identically: on
    the original variant `checked` is `qr_distill` (data.drop_cut_wrong is on by default), and the
    report would show one config twice under two names, as if compared."""
    from qr_ds.config import ConfigError, from_dict, to_dict
    from qr_ds.train.config import TrainConfig

    models, here = [Path(m) for m in MAX_LEN], Path(".")
    seen: dict[str, str] = {}
    for name in methods:
        settings = train_settings(here, "method", overrides(name, variant), models, here / "pool.jsonl",
                                  here / "unfiltered.jsonl", SIZES["small"], 0)
        try:
            settings = to_dict(from_dict(TrainConfig, settings))
        except ConfigError:  # a file it names is made later (the path oracle's list): compared as written
            pass
        key = json.dumps(settings, sort_keys=True, default=str)
        if key in seen:
            raise SystemExit(f"qr-ds demo: --methods {seen[key]} and {name} train identically on --variant {variant} "
                             "(their training configs are the same once defaults are filled in); keep one")
        seen[key] = name


def write_oracle_withhold(pool: Path) -> Path:
    """The ids of the pool's harmful paths (the stand-in teacher's corrected-late ones, whose plain-SFT
    probe is in benchmarks/README.md), one a line, beside the pool: the path oracle's assignment."""
    from qr_ds.data.pool import load_pool
    from qr_ds.teacher.scripted import corrected_late

    out = pool.with_name(ORACLE_WITHHOLD)
    if not out.is_file():
        ids = [r.id for r in load_pool(pool).records if corrected_late(r.response or "")]
        out.write_text("".join(f"{i}\n" for i in ids))
    return out


def _methods(text: str) -> tuple[str, ...]:
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in names if m not in RUNS]
    if unknown or not names:
        raise SystemExit(f"qr-ds demo: --methods {text!r}: unknown {unknown}; choose from {', '.join(RUNS)}")
    return names


class Timings:
    """Seconds per stage, kept on disk so a resumed demo still reports what the whole run took."""

    def __init__(self, path: Path):
        self.path = path
        self.done = json.loads(path.read_text()) if path.is_file() else {}

    def run(self, name: str, fn, *args):
        print(f"\n== {name}", flush=True)
        t = time.perf_counter()
        out = fn(*args)
        self.done[name] = self.done.get(name, 0.0) + time.perf_counter() - t
        self.path.write_text(json.dumps(self.done, indent=1))
        return out

    def total(self) -> float:
        return sum(self.done.values())


def _qr_ds(out: Path, *args: str) -> None:
    """Our own CLI in a subprocess, the way a user runs it (and vLLM wants its own main process).
    Safe-path: the checkout's kernels/ folder must not shadow the `kernels` package transformers probes."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONSAFEPATH="1")
    env.setdefault("DS_ACCELERATOR", "cpu")
    cmd = [sys.executable, "-m", "qr_ds", *args]
    if subprocess.call(cmd, env=env, cwd=str(out)) != 0:
        raise RuntimeError(f"stage failed: qr-ds {' '.join(args)}")


def pipeline_data(out: Path, size: Size, timings: Timings, variant: str = "original") -> tuple[Path, Path, Path, Path]:
    from qr_ds.config import from_dict
    from qr_ds.embed.config import EmbedConfig
    from qr_ds.embed.run import run_embed
    from qr_ds.filter.config import FilterConfig
    from qr_ds.filter.run import print_result, run_filter
    from qr_ds.tasks import write_synthetic
    from qr_ds.teacher.config import GenerateConfig
    from qr_ds.teacher.generate import generate, print_summary

    data = out / "data"
    train_q, test_q = data / "train.jsonl", data / "test.jsonl"
    if not test_q.is_file():
        write_synthetic(train_q, size.train_questions, seed=0)
        write_synthetic(test_q, size.test_questions, seed=1)
    pool, filtered = data / "pool.jsonl", data / "filtered.jsonl"
    embedded, unfiltered = data / "embedded.jsonl", data / "embedded_unfiltered.jsonl"
    gen = from_dict(GenerateConfig, {"task": "synthetic", "data": str(train_q), "out": str(pool),
                                     "samples_per_style": size.samples_per_style,
                                     "teacher": {"backend": "scripted", "sampling": {"seed": 0},
                                                 "scripted": VARIANTS[variant]}})
    timings.run("generate: scripted stand-in teacher, six styles", lambda: print_summary(generate(gen), pool))
    flt = from_dict(FilterConfig, {"pool": str(pool), "out": str(filtered), "judge": {"backend": "scripted"}})
    timings.run("filter: answer check + scripted judge", lambda: print_result(run_filter(flt)))

    def embed():  # the w/o-QF ablation trains on every generated path, so both pools get embeddings
        for src, dst in ((filtered, embedded), (pool, unfiltered)):
            run_embed(from_dict(EmbedConfig, {"pool": str(src), "out": str(dst),
                                              "cache_dir": str(data / "emb_cache")}))

    timings.run("embed: frozen MiniLM encoder", embed)
    # the filter's own file: it names what judged, and sits beside the filtered pool the report counts levels in
    return embedded, unfiltered, test_q, filtered.with_name(filtered.stem + ".retention.json")


def students(out: Path, pool: Path, seed: int) -> list[Path]:
    """The two tiny students of one training seed: random init and tokenizers of their own."""
    from qr_ds.data.pool import load_pool
    from qr_ds.tasks import get_task
    from qr_ds.tiny import build_tiny_student

    dirs = [out / "students" / f"s{seed}" / k for k in STUDENT_KINDS]
    if all((d / "config.json").is_file() for d in dirs):
        return dirs
    recs = load_pool(pool).records
    corpus = [t for r in recs for t in (r.question, r.response or "")] + [get_task("synthetic").instruction]
    return [build_tiny_student(k, d, corpus, vocab_size=600, hidden=128, layers=2, seed=1000 * seed + i)
            for i, (k, d) in enumerate(zip(STUDENT_KINDS, dirs))]


def train_config(out: Path, name: str, over: dict, models: list[Path], pool: Path, unfiltered: Path,
                 size: Size, seed: int) -> Path:
    path = out / "configs" / f"{name}_s{seed}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(train_settings(out, name, over, models, pool, unfiltered, size, seed), sort_keys=False))
    return path


def train_settings(out: Path, name: str, over: dict, models: list[Path], pool: Path, unfiltered: Path,
                   size: Size, seed: int) -> dict:
    """The training config of one method and seed, as the demo writes it."""
    from qr_ds.tiny import tokenizer_dir

    cfg = {
        # full fine-tuning: LoRA on a tiny random-init model cannot sharpen its frozen random
        # output layer: after 150 steps its loss was 4.7 nats, full training's 0.5.
        "students": [{"name": m.name.split("-")[0], "model": str(m), "tokenizer": str(tokenizer_dir(m)),
                      "max_len": MAX_LEN[m.name], "lr": 3e-3, "finetune": "full",
                      "deepspeed": str(ROOT / "ds_configs" / "zero2.json")} for m in models],
        "data": {"pool": str(pool)},
        "router": {"hidden": 64, "lr": 3e-3},
        "mutual": {"shared_dim": 32, "max_spans": 16},
        # the budget is max_steps for every method; epochs only needs to be enough to reach it
        "lambda1": 1.0, "lambda2": 0.1, "micro_batch_paths": 8, "epochs": 1000, "max_steps": size.steps,
        "warmup_steps": 10, "seed": seed, "output_dir": str(out / "runs" / name / f"s{seed}"),
        "collective_timeout_s": 120,
    }
    for key, value in over.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    if not cfg["data"].get("quality_filter", True):
        cfg["data"]["pool"] = str(unfiltered)
    return cfg


def _finished(run: Path) -> bool:
    latest = RunDir(run).latest()
    return latest is not None and latest.meta.is_file()


def train_seed(out: Path, seed: int, size: Size, pool: Path, unfiltered: Path, timings: Timings,
               methods: tuple[str, ...] = DEFAULT_METHODS, variant: str = "original") -> dict[str, Path]:
    """Every method of one training seed, through the DeepSpeed launcher; finished runs are kept."""
    models = timings.run(f"students of seed {seed}: tiny Llama (byte-level BPE) and tiny Qwen2 (its own BPE), "
                         "random init", students, out, pool, seed)
    runs = {}
    for name in methods:
        if name == "oracle":
            write_oracle_withhold(pool)
        label, over = RUNS[name][0], overrides(name, variant, pool.parent)
        run = runs[name] = out / "runs" / name / f"s{seed}"
        cfg = train_config(out, name, over, models, pool, unfiltered, size, seed)
        if _finished(run):
            print(f"\n== train {name} seed {seed}: done already ({run})")
            continue
        # an interrupted run without a final checkpoint is set aside (never deleted) and trained again
        again = ["--overwrite"] if run.exists() else []
        timings.run(f"train {name} ({label}) seed {seed} through the DeepSpeed launcher",
                    _qr_ds, out, "train", "--config", str(cfg), *again)
    return runs


def evaluate_seed(out: Path, seed: int, runs: dict[str, Path], size: Size, test_q: Path, pool: Path,
                  timings: Timings) -> Path:
    """One `qr-ds eval` over every method's final checkpoint of one seed (one vLLM engine per base model)."""
    ev = out / "eval" / f"s{seed}"
    if not (ev / "summary.json").is_file():
        args = ["eval", "--task", f"synthetic={test_q}", "--out", str(ev), "--limit", str(size.eval_limit),
                "--max-new-tokens", str(size.max_new_tokens), "--max-model-len", "512",
                "--gpu-memory-utilization", "0.1", "--teacher-pool", str(pool),
                "--overwrite"]  # no summary: an evaluation cut short, which is moved aside, not kept as results
        for run in runs.values():
            args += ["--checkpoint", str(RunDir(run).require_latest().path)]
        timings.run(f"evaluate seed {seed}: every student of every method with vLLM", _qr_ds, out, *args)
    return ev


def run_demo(out: Path, size_name: str, seeds: int = 1, skip_eval: bool = False, variant: str = "original",
             methods: tuple[str, ...] = DEFAULT_METHODS) -> int:
    if seeds < 1:
        raise ValueError(f"demo: --seeds must be >= 1, got {seeds}")
    for name in methods:  # a bad method/variant pair fails before any stage runs
        overrides(name, variant)
    refuse_same_training(methods, variant)
    size = SIZES[size_name]
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings = Timings(out / "timings.json")
    pool, unfiltered, test_q, retention = pipeline_data(out, size, timings, variant)
    runs = {seed: train_seed(out, seed, size, pool, unfiltered, timings, methods, variant) for seed in range(seeds)}
    if skip_eval:
        return 0
    evals = [evaluate_seed(out, seed, runs[seed], size, test_q, pool, timings) for seed in range(seeds)]
    notes = [f"Size '{size_name}': {size.train_questions} training and {size.test_questions} test questions of the "
             f"synthetic task ({variant} variant); paths from a scripted stand-in teacher (no real LLM), judged by "
             "a scripted judge.",
             "Students are tiny random-init transformers (2 layers, hidden 128) with locally trained tokenizers, "
             f"fully fine-tuned; contexts {MAX_LEN['llama-bpe']} (Llama) and {MAX_LEN['qwen-bpe']} (Qwen2) "
             "tokens, so the Llama student cannot finish the long styles.",
             f"Budget: {size.steps} optimizer steps of 8 paths for every method; {seeds} training seed(s) "
             f"(0..{seeds - 1}), each with its own student init, data order and router.",
             f"Demo wall time, all stages: {timings.total():.0f} s on this machine ({os.cpu_count()} CPUs); "
             f"per stage in {timings.path.name}."]
    report = timings.run("report", build_report_for, out, runs, evals, retention, notes, methods)
    print(f"\nreport: {report}")
    if seeds < 3:
        print(f"one seed per method: the report's intervals cover test questions only. The {SIZES['full'].steps}-step, "
              f"3-seed study is `qr-ds demo --seeds 3` (its results: {STUDY}/)")
    return 0


def build_report_for(out: Path, runs: dict[int, dict[str, Path]], evals: list[Path], retention: Path,
                     notes: list[str], methods: tuple[str, ...] = DEFAULT_METHODS) -> Path:
    """Every method labelled as in Table 2 with its seeds as one group, the first method first: the
    others are compared against it."""
    from qr_ds.report.build import build_report

    groups = {RUNS[name][0]: [runs[seed][name] for seed in sorted(runs)] for name in methods}
    # each seed draws its own random student init (and tokenizer folder): part of the training noise measured
    return build_report(out / "report", groups, evals, retention, notes,
                        may_differ=("students[].model", "students[].tokenizer"))
