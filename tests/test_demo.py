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
                  "SFT (one path per question) llama", "Zero-shot",
                  "Not a test score: the teacher (scripted stand-in teacher"):  # its pool figure, labelled
        assert label in md


def test_report_numbers_match_metrics(demo):
    data = json.loads((demo / "report" / "report.json").read_text())
    for label, run in data["runs"].items():
        assert Path(run) == demo / "runs" / {"QR-Distill": "qr_distill", "w/o QF": "no_filter", "w/o Route": "no_route",
                                              "w/o Collab": "no_mutual",
                                              "SFT (one path per question)": "sft_single"}[label] / "s0"
        assert data["throughput"][label] == pytest.approx(throughput(load_run(label, Path(run)).rows))
    # every method at the same budget: the protocol's equal optimizer steps
    assert all(b["steps"] == [6] and not b["flags"] for b in data["budgets"].values())
    routing = data["routing"]["QR-Distill"]["style"]  # the final router over every path of the run's pool
    assert routing.keys() == {"llama", "qwen"}
    n_paths = sum(1 for line in Path(data["routing"]["QR-Distill"]["pool"]).read_text().splitlines() if line.strip())
    for cells in routing.values():
        assert sum(c["paths"] for c in cells.values()) == n_paths
        assert all(0.0 <= c["mean_probability"] <= 1.0 for c in cells.values())
    assert {t["b"] for t in data["accuracy"]["paired_tests"]} == {"w/o QF", "w/o Route", "w/o Collab",
                                                                   "SFT (one path per question)"}
    assert all(t["noise"] == "questions only" for t in data["accuracy"]["paired_tests"])  # one seed each
    preds = [json.loads(l) for l in (demo / "eval" / "s0" / "predictions.jsonl").read_text().splitlines()]
    for group in data["accuracy"]["groups"]:  # each method's own checkpoint, not another's of the same step
        run = {"QR-Distill": "qr_distill", "w/o QF": "no_filter", "w/o Route": "no_route", "w/o Collab": "no_mutual",
               "SFT (one path per question)": "sft_single"}[group["group"]]
        mine = [p for p in preds if p["checkpoint"] == f"{run}/s0/step_000006" and p["student"] == group["student"]]
        assert group["questions"] == len(mine) == 24
        assert group["per_seed"]["0"] == pytest.approx(sum(p["correct"] for p in mine) / len(mine))
