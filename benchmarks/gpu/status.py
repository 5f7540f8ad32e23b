"""Bookkeeping for gpu_run.sh: the machine description, and each stage's outcome in one summary.

    python benchmarks/gpu/status.py machine OUTDIR
    python benchmarks/gpu/status.py stage OUTDIR NAME RC SECONDS LIMIT_S

``machine`` writes OUTDIR/machine.json (common.machine() and the versions of the packages the run
needs). ``stage`` records one stage in OUTDIR/summary.json: ok / timeout / failed, its seconds, the
tail of its log and its result JSON inlined, so that summary.json alone holds the whole run (the
device tool brings back only a few files), and each performance goal met or missed. It imports no torch: it must work when the install failed.
"""
from __future__ import annotations

import importlib
import json
import platform
import sys
from pathlib import Path

# The README's performance goals: (goal, stage, the row it reads, its key, comparison, bound)
GOALS = [
    ("student step >= 2.0x plain, Mistral-7B nf4", "student_step_7b", {"model": "mistral", "variant": "qr_ds"},
     "vs_plain", ">=", 2.0),
    ("student step peak < 60 GiB, Mistral-7B nf4", "student_step_7b", {"model": "mistral", "variant": "qr_ds"},
     "peak_GiB", "<", 60.0),
    ("exchange < 5% of the step", "multi_student", {"placement": "colocated"}, "exchange_share", "<", 0.05),
    ("colocated within 1.1x of the students' summed compute", "multi_student", {"placement": "colocated"},
     "step_over_summed_compute", "<=", 1.1),
]
COMPARE = {">=": float.__ge__, "<": float.__lt__, "<=": float.__le__}
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
    summary["goals"] = goals(summary["stages"])
    summary_file.write_text(json.dumps(summary, indent=1))
    return entry


def goals(stages: dict) -> list[dict]:
    """Each goal with the measured value and met / missed; only CUDA numbers count."""
    out = []
    for goal, stage, where, key, op, bound in GOALS:
        results = stages.get(stage, {}).get("results", {}).values()
        rows = [r for res in results for r in res["rows"] if where.items() <= r.items()]
        value = rows[0].get(key) if rows else None
        on_gpu = any(res["machine"]["device"] == "cuda" for res in results)
        verdict = ("not measured" if not rows else "n/a: not a GPU" if not on_gpu else
                   "not measured" if not isinstance(value, (int, float)) else
                   "met" if COMPARE[op](float(value), bound) else "missed")
        out.append({"goal": goal, "stage": stage, "key": key, "value": value, "bound": f"{op} {bound}",
                    "verdict": verdict})
    return out


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
