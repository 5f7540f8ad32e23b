#!/usr/bin/env bash
# Every benchmark at toy size on CPU, one after another (make bench). Add one `run` line per benchmark.
# Extra arguments (e.g. --out DIR, --plot) are passed to each. Results land in a fresh folder,
# runs/bench/<time>, never in benchmarks/results: the measurements committed there are not replaced by
# toy numbers (a later --out DIR of the extra arguments wins).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=runs/bench/$(date +%Y%m%d-%H%M%S)
echo "results: $OUT (unless --out is given)"

run() {
    echo
    echo "=== $1"
    "$PY" "$1" --out "$OUT" "${@:2}"
}

run benchmarks/bench_kernels.py --size toy "$@"
run benchmarks/bench_student_step.py --size toy "$@"
run benchmarks/bench_generate.py "$@"
run benchmarks/bench_eval.py "$@"
run benchmarks/bench_multi_student.py "$@"
run benchmarks/bench_routing.py "$@"
run benchmarks/bench_mutual.py "$@"
run benchmarks/bench_routing_students.py "$@"
run benchmarks/bench_transfer.py "$@"
run benchmarks/probe_demo_task.py "$@"
run benchmarks/bench_scale.py --size toy "$@"
run benchmarks/bench_routing_gain.py "$@"
run benchmarks/bench_handoffs.py "$@"
run benchmarks/bench_real_students.py "$@"
