"""Bookkeeping for gpu_run.sh: the machine description, and each stage's outcome in one summary.

    python benchmarks/gpu/status.py machine OUTDIR
    python benchmarks/gpu/status.py stage OUTDIR NAME RC SECONDS LIMIT_S

``machine`` writes OUTDIR/machine.json (common.machine() and the versions of the packages the run
needs). ``stage`` records one stage in OUTDIR/summary.json: ok / timeout / failed, its seconds, the
tail of its log and its result JSON inlined, so that summary.json alone holds the whole run (the
device tool brings back only a few files). It imports no torch: it must work when the install failed.
"""
from __future__ import annotations

import importlib
import json
import platform
import sys
from pathlib import Path

PACKAGES = ["torch", "transformers", "peft", "deepspeed", "bitsandbytes", "liger_kernel", "triton", "vllm", "qr_ds"]
TIMED_OUT = (124, 137)  # timeout(1): TERM, then KILL after its grace period


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            module = importlib.import_module(name)
            found[name] = getattr(module, "__version__", "importable")
        except Exception as e:  # noqa: BLE001 - a package that fails to import is a finding, not a crash
            found[name] = f"missing: {type(e).__name__}: {e}"[:200]
    return found


def write_machine(out: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from common import machine

    (out / "machine.json").write_text(json.dumps({**machine(), "packages": versions()}, indent=1))


def record_stage(out: Path, name: str, rc: int, seconds: float, limit_s: float) -> dict:
    machine_file = out / "machine.json"
    machine = (json.loads(machine_file.read_text()) if machine_file.exists()
               else {"host": platform.node(), "platform": platform.platform(), "note": "machine.json missing"})
    log = out / f"{name}.log"
    results = {p.name: json.loads(p.read_text()) for p in sorted(out.glob(f"{name}-*.json"))}
    timed_out = rc in TIMED_OUT and seconds >= limit_s - 1  # not an OOM kill's 137
    entry = {"stage": name, "status": "ok" if rc == 0 else "timeout" if timed_out else "failed", "rc": rc,
             "seconds": seconds, "limit_s": limit_s, "machine": machine, "results": results,
             "log_tail": log.read_text(errors="replace")[-3000:] if log.exists() else ""}
    summary_file = out / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {"stages": {}}
    summary["machine"] = machine
    summary["stages"][name] = entry
    summary_file.write_text(json.dumps(summary, indent=1))
    return entry


def main(argv: list[str]) -> int:
    if argv[:1] == ["machine"] and len(argv) == 2:
        write_machine(Path(argv[1]))
        return 0
    if argv[:1] == ["stage"] and len(argv) == 6:
        entry = record_stage(Path(argv[1]), argv[2], int(argv[3]), float(argv[4]), float(argv[5]))
        print(f"stage {entry['stage']}: {entry['status']} (rc {entry['rc']}, {entry['seconds']:.0f} s "
              f"of {entry['limit_s']:.0f})")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
