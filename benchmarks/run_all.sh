#!/usr/bin/env bash
# Every benchmark at toy size on CPU, one after another (make bench). Add one `run` line per benchmark.
# Extra arguments (e.g. --out DIR, --plot) are passed to each; results land in benchmarks/results.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

run() {
    echo
    echo "=== $1"
    "$PY" "$@"
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
