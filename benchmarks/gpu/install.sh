#!/usr/bin/env bash
# gpu_run.sh's first stage: make the project and the packages the GPU machine lacks importable there,
# without a registry (usage: install.sh PYTHON SITE OUTDIR). Wheels come from benchmarks/gpu_wheels/,
# filled by benchmarks/gpu_wheels.sh and carried with the tree; they go to SITE, which gpu_run.sh puts
# on PYTHONPATH. Where everything imports already (the CPU rehearsal's venv) nothing is installed.
set -euo pipefail
PY=$1 SITE=$2 OUTDIR=$3
WHEELS=benchmarks/gpu_wheels
# module -> the wheels it needs (names as the wheel files spell them); liger_kernel is optional: without
# it bench_kernels has no Liger rows
declare -A WHEELS_OF=([deepspeed]="deepspeed hjson pydantic pydantic_core annotated_types typing_inspection
                      typing_extensions" [bitsandbytes]=bitsandbytes [liger_kernel]=liger_kernel)
wheels=()
for module in deepspeed bitsandbytes liger_kernel; do
    "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('$module') is None)" && continue
    for w in ${WHEELS_OF[$module]}; do
        found=("$WHEELS"/"$w"-[0-9]*.whl)
        if [ -e "${found[0]}" ]; then
            wheels+=("${found[@]}")
        elif [ "$module" = liger_kernel ]; then
            echo "install: liger_kernel missing and not in $WHEELS: no Liger rows"
        else
            echo "install: $module missing and $WHEELS has no $w wheel: run benchmarks/gpu_wheels.sh where pip" \
                 "reaches PyPI and carry $WHEELS with the tree" >&2
            exit 1
        fi
    done
done
if [ ${#wheels[@]} -gt 0 ]; then
    echo "install: ${#wheels[@]} wheels into $SITE: ${wheels[*]##*/}"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}"
fi
if ! "$PY" -c 'import qr_ds.kernels' 2>/dev/null; then
    # qr_ds.kernels lives in the top-level kernels/ (setup.py's package_dir): only an install maps it.
    # Editable, so launch/ and ds_configs/ stay where the trainer looks for them. The build needs setuptools:
    # the carried wheel where the machine has none.
    "$PY" -c 'import setuptools' 2>/dev/null ||
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/setuptools-[0-9]*.whl
    flag=$("$PY" -m pip install --help | grep -q -- --break-system-packages && echo --break-system-packages || true)
    echo "install: qr_ds not installed; pip install -e . $flag"
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation $flag -e .
fi
"$PY" benchmarks/gpu/status.py machine "$OUTDIR"
cat "$OUTDIR/machine.json"
