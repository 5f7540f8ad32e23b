"""The multi-student step: separate vs colocated placement, the mutual exchange's bytes and time,
the time a student waits for the slower one, and the router's overhead (against w/o Route). Runs the
real trainer through the DeepSpeed launcher (gloo on CPU; on CUDA the launcher's cuda accelerator,
where ranks sharing the one GPU fall back to gloo).

    python benchmarks/bench_multi_student.py [--steps 8] [--students DIR DIR | --pair]
        [--placements separate colocated] [--router-off]

Time in the exchange = wait for the slower peer + the all-gather itself; the all-gather part is
estimated as the smallest exchange time over students (the last to arrive waits for no one).
Colocated, the exchange is local: its share is the mutual loss's own time, and the step is compared
with the two students' summed compute (forward, probes, backward, optimizer step).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks")]

from common import base_argparser, claim_results, markdown_table, plot_bars, resolve_size, save_results  # noqa: E402

# size -> what each student trains with, and the batch: full = the pair's bf16 LoRA on a GPU
SETTINGS = {
    "toy": {"dtype": "float32", "lora": {"r": 4, "alpha": 8}, "micro_batch_paths": 4, "max_len": 256,
            "mutual": {"shared_dim": 64, "max_spans": 32}},
    "full": {"dtype": "bfloat16", "lora": {"r": 32, "alpha": 64}, "micro_batch_paths": 8, "max_len": 512,
             "mutual": {"shared_dim": 256, "max_spans": 64}},
}


def run(trainkit, work: Path, students: list[tuple[Path, Path]], pool: Path, placement: str, steps: int,
        size: str, router: bool, timeout: float) -> dict:
    label = f"{placement}{'' if router else '-noroute'}"
    run_dir = work / label
    setting = SETTINGS[size]
    cfg = trainkit.write_config(work / f"{label}.yaml", [m for m, _ in students], pool, run_dir, max_steps=steps,
                                placement=placement, micro_batch_paths=setting["micro_batch_paths"],
                                mutual=setting["mutual"], router={"hidden": 16, "enabled": router},
                                data={"pool": str(pool), "max_len": setting["max_len"]})
    doc = yaml.safe_load(cfg.read_text())
    for s, (_, tok) in zip(doc["students"], students):
        s.update(tokenizer=str(tok), dtype=setting["dtype"], lora=setting["lora"])
    cfg.write_text(yaml.safe_dump(doc))
    import torch

    from qr_ds.data.jsonl import iter_jsonl
    from qr_ds.run_layout import RunDir

    accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    res = trainkit.launch(cfg, len(students) if placement == "separate" else 1, timeout=timeout,
                          env_extra={"DS_ACCELERATOR": accelerator})
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    rows = list(iter_jsonl(RunDir(run_dir).metrics))[1:]  # skip warm-up
    names = [k.split("/", 1)[1] for k in rows[0] if k.startswith("sft_loss/")]
    mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    step_s = mean("step_s")
    compute = {n: mean(f"compute_s/{n}") for n in names}
    out = {"placement": label, "steps": len(rows), "step_s": step_s, "tokens_per_s": mean("tokens_per_s"),
           "tokens_per_step": sum(r["tokens_per_s"] * r["step_s"] for r in rows) / len(rows),
           "peak_mem_GiB": max(r["peak_mem_GiB"] for r in rows),
           "exchange_MiB_per_step": rows[0].get("exchange_bytes", 0) / 2**20,
           "exchange_s": mean("exchange_s"), "exchange_share": mean("exchange_s") / step_s,
           **{f"compute_s/{n}": c for n, c in compute.items()}}
    if placement == "separate":  # the coordinator's exchange: its wait for the peer plus the all-gathers
        out["step_over_slowest_student"] = step_s / max(compute.values())
    else:  # one process runs both students one after the other: the step is their sum plus overhead
        out["step_over_summed_compute"] = step_s / sum(compute.values())
    return out


def students_for(args, size: str, work: Path, pool: Path, trainkit) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(model dir, tokenizer dir) per student, and which weights each has."""
    from qr_ds.tiny import tokenizer_dir

    if args.students:
        return [(s, tokenizer_dir(s)) for s in args.students], ["given"] * len(args.students)
    if not args.pair:
        return [(s, tokenizer_dir(s)) for s in trainkit.make_students(work / "students", pool)], ["tiny random"] * 2
    from gpu.pair import PAIR, student_dir

    built = [student_dir(name, size, work / "students", trainkit.corpus(pool), SETTINGS[size]["dtype"])
             for name in PAIR]
    return [(m, t) for m, t, _ in built], [w for _, _, w in built]


def main() -> None:
    p = base_argparser(__doc__, "bench_multi_student")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--students", nargs="*", type=Path, help="student model dirs (default: tiny ones built here)")
    p.add_argument("--pair", action="store_true",
                   help="the real small pair's shapes (SmolLM2-135M, Gemma-3-270M; benchmarks/gpu/pair.py)")
    p.add_argument("--placements", nargs="+", choices=["separate", "colocated"], default=["separate", "colocated"])
    p.add_argument("--router-off", action="store_true",
                   help="also run each placement with router.enabled: false (w/o Route): the router's overhead")
    p.add_argument("--questions", type=int, default=16, help="synthetic questions in the pool (6 paths each)")
    p.add_argument("--launch-timeout", type=float, default=1200, help="seconds per training launch")
    args = p.parse_args()
    claim_results(args)
    size = resolve_size(args)
    from qr_ds.testing import builders as trainkit

    work = Path(tempfile.mkdtemp(prefix="bench_multi_"))
    pool = trainkit.make_pool(work / "pool", n_questions=args.questions)
    students, weights = students_for(args, size, work, pool, trainkit)
    rows = []

    def save(complete: bool):  # after every launch: a run killed by its time limit keeps what it measured
        return save_results(args.name, rows, {"size": size, "weights": weights, "settings": SETTINGS[size],
                                              "complete": complete}, args.out)

    for placement in args.placements:
        for router in (True, False) if args.router_off else (True,):
            rows.append(run(trainkit, work, students, pool, placement, args.steps, size, router,
                            args.launch_timeout))
            save(False)
    by = {r["placement"]: r for r in rows}
    if {"separate", "colocated"} <= set(by):
        rows.append({"placement": "colocated / separate step time",
                     "step_s": by["colocated"]["step_s"] / by["separate"]["step_s"]})
    for placement in args.placements:
        if args.router_off:
            rows.append({"placement": f"{placement}: router overhead (step with Route / w/o Route)",
                         "step_s": by[placement]["step_s"] / by[f"{placement}-noroute"]["step_s"]})
    print(markdown_table(rows))
    print(f"\n{size} size, {len(students)} students ({', '.join(weights)}); on a 2-core CPU the 'separate' ranks "
          "share cores, so placement ratios there say little about GPUs.")
    path = save(True)
    print(f"wrote {path}")
    if args.plot:
        plot_bars(path.with_suffix(".png"), rows[:2], "placement", "step_s", "Multi-student step time")


if __name__ == "__main__":
    main()
