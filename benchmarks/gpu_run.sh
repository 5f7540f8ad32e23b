#!/usr/bin/env bash
# The GPU run: every number the README's performance goals need, on one GPU, within 9 minutes wall
# including installs (benchmarks/README.md, "The GPU run").
#
#   benchmarks/gpu_run.sh OUTDIR [--rehearse] [--only STAGE[,STAGE...]]
#
# Each stage runs under its own timeout and writes OUTDIR/<stage>.log and its result JSON
# OUTDIR/<stage>-<device>.json; OUTDIR/summary.json gathers every stage's outcome, result and log
# tail. A stage that fails or times out leaves the others' JSON; the script then exits 1.
# --rehearse: every stage at toy size on CPU, through the same code paths (tests/test_gpu_rehearsal.py).
# GPU_RUN_TIMEOUT_<STAGE> (e.g. GPU_RUN_TIMEOUT_KERNELS=30) overrides a stage's limit in seconds.
set -uo pipefail

usage() { echo "usage: $0 OUTDIR [--rehearse] [--only STAGE[,STAGE...]]; stages: ${STAGES[*]}" >&2; exit 2; }
# stage, limit on the GPU (s), limit in the rehearsal (s): most important first. The GPU limits sum
# to 515 s; with 3 s of grace per killed stage and the bookkeeping the run stays under 540.
STAGES=(install student_step_7b multi_student kernels student_step_pair eval)
declare -A LIMIT_GPU=([install]=45 [student_step_7b]=110 [multi_student]=170 [kernels]=50
                      [student_step_pair]=75 [eval]=65)
# CPU: ceilings for a hang on a shared 2-core machine, where each CPU launch may first wait on another
# launch's JIT build of DeepSpeed's shm op (the multi-student stage launches twice)
declare -A LIMIT_CPU=([install]=300 [student_step_7b]=300 [multi_student]=1200 [kernels]=300
                      [student_step_pair]=300 [eval]=300)

[ $# -ge 1 ] && [[ $1 != -* ]] || usage
OUTDIR=$1
shift
REHEARSE=0
ONLY=""
while [ $# -gt 0 ]; do
    case $1 in
        --rehearse) REHEARSE=1 ;;
        --only) [ $# -ge 2 ] || usage; ONLY=",$2,"; shift ;;
        *) usage ;;
    esac
    shift
done
for s in ${ONLY//,/ }; do [[ " ${STAGES[*]} " == *" $s "* ]] || { echo "unknown stage $s" >&2; usage; }; done

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)  # before the cd: a relative OUTDIR is the caller's
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
    PY=python3
    [ -x .venv/bin/python ] && PY=$PWD/.venv/bin/python
fi
SITE=${GPU_RUN_SITE:-$OUTDIR.site}  # wheels installed by the install stage; beside OUTDIR, whose files come back
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
# DeepSpeed's op builder cannot parse an arch such as "9.0a" (../shared/notes/environment.md): use "9.0"
[ -n "${TORCH_CUDA_ARCH_LIST:-}" ] && export TORCH_CUDA_ARCH_LIST=$(sed -E 's/([0-9])a\b/\1/g' <<<"$TORCH_CUDA_ARCH_LIST")
if [ $REHEARSE = 1 ]; then
    SIZE=toy
    export DS_ACCELERATOR=cpu
    # 1 step / 1 iteration / 4 prompts: the rehearsal proves the paths run, it measures nothing
    STEP=(--steps 1) KERN=(--iters 1) MULTI=(--steps 3 --questions 4) EVAL=(--prompts 4 --max-new-tokens 4)
else
    SIZE=full
    STEP=() KERN=() MULTI=(--steps 20 --questions 32) EVAL=(--prompts 64 --max-new-tokens 128)
fi
# --overwrite: a rerun into the same OUTDIR (--only STAGE) replaces that stage's JSON; the old one is kept
# as <file>.replaced-<time>, which status.py's <stage>-*.json does not read
COMMON=(--size "$SIZE" --out "$OUTDIR" --overwrite)

failed=0
stage() {
    local name=$1 limit
    shift
    [ -z "$ONLY" ] || [[ $ONLY == *",$name,"* ]] || return 0
    if [ $REHEARSE = 1 ]; then limit=${LIMIT_CPU[$name]}; else limit=${LIMIT_GPU[$name]}; fi
    local var="GPU_RUN_TIMEOUT_${name^^}"
    limit=${!var:-$limit}
    echo "=== $name (limit ${limit} s)"
    local t0=$SECONDS rc=0
    timeout -k 3 "$limit" "$@" >"$OUTDIR/$name.log" 2>&1 || rc=$?
    "$PY" benchmarks/gpu/status.py stage "$OUTDIR" "$name" "$rc" "$((SECONDS - t0))" "$limit" || rc=1
    [ $rc = 0 ] || failed=1
}

stage install bash benchmarks/gpu/install.sh "$PY" "$SITE" "$OUTDIR"
stage student_step_7b "$PY" benchmarks/bench_student_step.py "${COMMON[@]}" --name student_step_7b \
    --models mistral "${STEP[@]}"
stage multi_student "$PY" benchmarks/bench_multi_student.py "${COMMON[@]}" --name multi_student \
    --pair --placements colocated --router-off "${MULTI[@]}"
stage kernels "$PY" benchmarks/bench_kernels.py "${COMMON[@]}" --name kernels "${KERN[@]}"
stage student_step_pair "$PY" benchmarks/bench_student_step.py "${COMMON[@]}" --name student_step_pair \
    --models smollm2 gemma3 --no-nf4 "${STEP[@]}"
stage eval "$PY" benchmarks/bench_eval.py "${COMMON[@]}" --name eval --pair "${EVAL[@]}"
echo "summary: $OUTDIR/summary.json ($SECONDS s in all)"
exit $failed
