"""The reduced demo end to end (scripted teacher -> filter -> embed -> DeepSpeed training of the method
and its ablations -> vLLM evaluation -> report), and the report's numbers against the metrics."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qr_ds.report.runs import load_run, throughput

# five trainings through the launcher plus a vLLM start: minutes, more than the suite-wide 600 s limit
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-m", "qr_ds", "demo", "--size", "small", "--out", str(out)],
                         env=env, capture_output=True, text=True, timeout=1500, cwd=out)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return out


def test_report_files_exist(demo):
    rep = demo / "report"
    assert (rep / "report.md").is_file()
    data = json.loads((rep / "report.json").read_text())
    for name in data["figures"].values():
        assert (rep / name).stat().st_size > 1000  # a real PNG
    assert {"loss", "router_training", "routing_style_qr_distill", "routing_level_qr_distill", "style_loss_qr_distill",
            "retention_style", "retention_level"} <= set(data["figures"])
    md = (rep / "report.md").read_text()
    for label in ("QR-Distill llama", "w/o QF qwen", "w/o Route llama", "w/o Collab qwen",
                  "SFT (one path per question) llama", "Zero-shot", "Teacher"):
        assert label in md


def test_report_numbers_match_metrics(demo):
    data = json.loads((demo / "report" / "report.json").read_text())
    for label, run in data["runs"].items():
        assert data["throughput"][label] == pytest.approx(throughput(load_run(label, Path(run)).rows))
    routing = data["routing"]["QR-Distill"]["style"]  # the final router over every path of the run's pool
    assert routing.keys() == {"llama", "qwen"}
    n_paths = sum(1 for line in Path(data["routing"]["QR-Distill"]["pool"]).read_text().splitlines() if line.strip())
    for cells in routing.values():
        assert sum(c["paths"] for c in cells.values()) == n_paths
        assert all(0.0 <= c["mean_probability"] <= 1.0 for c in cells.values())
    assert {t["b"] for t in data["accuracy"]["paired_tests"]} == {"w/o QF", "w/o Route", "w/o Collab",
                                                                   "SFT (one path per question)"}
    acc = {r["method"]: r for r in data["accuracy"]["tables"][0]["rows"]}
    preds = [json.loads(l) for l in (demo / "eval" / "predictions.jsonl").read_text().splitlines()]
    mine = [p for p in preds if p["checkpoint"].startswith("qr_distill/") and p["student"] == "llama"]
    cell = acc["QR-Distill llama"]["tasks"]["synthetic"]
    assert cell["n"] == len(mine) and cell["correct"] == sum(p["correct"] for p in mine)
