"""The multi-student step: separate vs colocated placement, the mutual exchange's bytes and time,
and the time a student waits for the slower one. Runs the real trainer through the DeepSpeed
launcher (gloo on CPU at toy size; NCCL on GPUs with --size full and real student dirs).

    python benchmarks/bench_multi_student.py [--steps 8] [--students DIR DIR]

Time in the exchange = wait for the slower peer + the all-gather itself; the all-gather part is
estimated as the smallest exchange time over students (the last to arrive waits for no one).
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks")]

from common import base_argparser, markdown_table, plot_bars, resolve_size, save_results  # noqa: E402


def run(trainkit, work: Path, students: list[Path], pool: Path, placement: str, steps: int) -> dict:
    run_dir = work / placement
    cfg = trainkit.write_config(work / f"{placement}.yaml", students, pool, run_dir, max_steps=steps,
                                placement=placement, micro_batch_paths=4,
                                mutual={"shared_dim": 64, "max_spans": 32})
    res = trainkit.launch(cfg, len(students) if placement == "separate" else 1, timeout=1200)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]  # skip warm-up
    names = [k.split("/", 1)[1] for k in rows[0] if k.startswith("sft_loss/")]
    mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    step_s = mean("step_s")
    out = {"placement": placement, "steps": len(rows), "step_s": step_s, "tokens_per_s": mean("tokens_per_s"),
           "exchange_MiB_per_step": rows[0].get("exchange_bytes", 0) / 2**20}
    if placement == "separate":  # the coordinator's exchange: its wait for the peer plus the all-gathers
        gather = mean("exchange_s")
        out.update(allgather_s=gather, allgather_share=gather / step_s,
                   **{f"compute_s/{n}": mean(f"compute_s/{n}") for n in names})
        slowest = max(mean(f"compute_s/{n}") for n in names)
        out["step_over_slowest_student"] = step_s / slowest if slowest else None
    return out


def main() -> None:
    p = base_argparser(__doc__)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--students", nargs="*", type=Path, help="student model dirs (default: tiny ones built here)")
    args = p.parse_args()
    size = resolve_size(args)
    from qr_ds.testing import builders as trainkit

    work = Path(tempfile.mkdtemp(prefix="bench_multi_"))
    pool = trainkit.make_pool(work / "pool", n_questions=16)
    students = args.students or trainkit.make_students(work / "students", pool)
    rows = [run(trainkit, work, students, pool, pl, args.steps) for pl in ("separate", "colocated")]
    sep, col = rows
    rows.append({"placement": "colocated / separate step time", "step_s": col["step_s"] / sep["step_s"]})
    print(markdown_table(rows))
    print(f"\n{size} size, {len(students)} students; on a 2-core CPU the 'separate' ranks share cores, "
          "so placement ratios here say little about GPUs.")
    path = save_results("bench_multi_student", rows, {"size": size}, args.out)
    print(f"wrote {path}")
    if args.plot:
        plot_bars(path.with_suffix(".png"), rows[:2], "placement", "step_s", "Multi-student step time")


if __name__ == "__main__":
    main()
