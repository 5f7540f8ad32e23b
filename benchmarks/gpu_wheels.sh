#!/usr/bin/env bash
# Fill benchmarks/gpu_wheels/ (git-ignored) with the wheels gpu_run.sh installs on a GPU machine that
# reaches no package registry. Run here, where pip reaches PyPI; the folder then travels with the
# working tree (the `run` device tool's `carry`), whose limit is 64 MiB in all.
# Target: the GPU machine's python 3.12 on x86-64 (see ../shared/notes/environment.md).
set -euo pipefail
cd "$(dirname "$0")"
DIR=gpu_wheels
LIMIT_MIB=56  # leaves the rest of the 64 MiB for the tracked tree
PY=${PY:-python3}
rm -rf "$DIR"  # one version of each: two stop the install there
mkdir -p "$DIR"
# platform-specific wheels: pip must be told the target, not this machine
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DIR" \
    pydantic-core==2.41.5 bitsandbytes==0.50.2
# pure-python wheels (DeepSpeed publishes an sdist only: build its py3 wheel here)
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$DIR" \
    pydantic==2.12.5 hjson annotated-types typing-inspection typing-extensions liger-kernel setuptools
"$PY" -m pip wheel -q --no-deps -w "$DIR" deepspeed==0.19.8
rm -f "$DIR"/*.tar.gz
total=$(du -sm "$DIR" | cut -f1)
ls -1s --block-size=K "$DIR"
echo "total ${total} MiB (limit ${LIMIT_MIB} MiB)"
if [ "$total" -gt "$LIMIT_MIB" ]; then
    echo "gpu_wheels.sh: $DIR is ${total} MiB, over ${LIMIT_MIB} MiB: it would not travel with the tree" >&2
    exit 1
fi
