"""No benchmark replaces a results file silently (benchmarks/common.py: claim_results, save_results): the
files in benchmarks/results are measurements the READMEs cite, and a plain or toy run used to write
over them."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the stub-server benchmark at its smallest: a second or two once imported
GENERATE = [sys.executable, str(ROOT / "benchmarks" / "bench_generate.py"), "--questions", "1",
            "--concurrency", "1", "--latency", "0.001", "--max-tokens", "4"]
OLD = b'{"benchmark": "bench_generate", "rows": ["measured earlier, cited by a README"]}\n'


def results_file(folder: Path) -> Path:
    import torch

    return folder / f"bench_generate-{'cuda' if torch.cuda.is_available() else 'cpu'}.json"


def common():
    spec = importlib.util.spec_from_file_location("bench_common_under_test", ROOT / "benchmarks" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generate(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*GENERATE, "--out", str(out), *extra], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def measured(tmp_path) -> Path:
    """A folder holding an earlier results file of bench_generate."""
    path = results_file(tmp_path)
    path.write_bytes(OLD)
    return path


def test_an_existing_results_file_is_refused_before_the_benchmark_runs(measured):
    res = generate(measured.parent)
    assert res.returncode != 0, res.stdout + res.stderr
    said = res.stderr.strip().splitlines()
    assert len(said) == 1, res.stderr  # one line, no traceback
    assert str(measured) in said[0] and "--out DIR" in said[0] and "--overwrite" in said[0], said
    assert "requests_per_s" not in res.stdout  # refused before measuring, not after
    assert measured.read_bytes() == OLD
    assert sorted(p.name for p in measured.parent.iterdir()) == [measured.name]


def test_overwrite_keeps_the_old_file_aside(measured):
    res = generate(measured.parent, "--overwrite")
    assert res.returncode == 0, res.stdout + res.stderr
    new = json.loads(measured.read_text())
    assert new["benchmark"] == "bench_generate" and new["rows"][0]["requests"] == 6
    (aside,) = [p for p in measured.parent.iterdir() if p != measured]
    assert re.fullmatch(re.escape(measured.name) + r"\.replaced-\d{8}-\d{6}", aside.name), aside.name
    assert aside.read_bytes() == OLD
    assert str(aside) in res.stderr  # and the run says where it went


def test_another_folder_leaves_the_results_alone(measured, tmp_path):
    res = generate(tmp_path / "elsewhere")
    assert res.returncode == 0, res.stdout + res.stderr
    assert measured.read_bytes() == OLD
    assert json.loads(results_file(tmp_path / "elsewhere").read_text())["rows"]


def test_a_run_rewrites_its_own_file_but_never_one_that_appeared_during_it(tmp_path, capsys):
    c = common()
    args = Namespace(name="x", out=tmp_path, overwrite=False)
    path = c.claim_results(args)
    assert not path.exists()
    assert c.save_results("x", [{"step": 1}], out_dir=tmp_path) == path  # benchmarks that save as they go
    assert c.save_results("x", [{"step": 2}], out_dir=tmp_path) == path
    assert json.loads(path.read_text())["rows"] == [{"step": 2}]

    later = c.claim_results(Namespace(name="y", out=tmp_path, overwrite=False))
    later.write_bytes(OLD)  # another run of the same benchmark finished first
    wrote = c.save_results("y", [{"step": 1}], out_dir=tmp_path)
    assert wrote != later and later.read_bytes() == OLD
    assert json.loads(wrote.read_text())["rows"] == [{"step": 1}]
    assert str(wrote) in capsys.readouterr().err


def test_every_benchmark_that_saves_results_claims_them_first():
    # claim_results after parse_args is what refuses before the work; save_results alone would only
    # notice at the end
    missing = [p.name for p in sorted((ROOT / "benchmarks").glob("*.py"))
               if "save_results(" in p.read_text() and p.name != "common.py" and "claim_results(" not in p.read_text()]
    assert missing == []
