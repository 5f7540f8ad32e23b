"""SIGKILL a real `python -m qr_ds generate` mid-run, resume, and get the uninterrupted pool."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from qr_ds.data.pool import load_pool
from qr_ds.tasks import write_synthetic
from qr_ds.teacher.generate import log_path
from qr_ds.testing.stub_server import StubChatServer

ROOT = Path(__file__).resolve().parents[1]


def write_cfg(tmp_path, name: str, url: str) -> Path:
    cfg = {"task": "synthetic", "data": str(tmp_path / "syn.jsonl"), "out": str(tmp_path / name / "pool.jsonl"),
           "samples_per_style": 2,
           "teacher": {"backend": "openai", "model": "stub", "base_url": url, "concurrency": 2,
                       "sampling": {"temperature": 0.8, "seed": 7}}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli(cfg: Path) -> list[str]:
    return [sys.executable, "-m", "qr_ds", "generate", str(cfg), "--no-progress"]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
    write_synthetic(tmp_path / "syn.jsonl", 6, seed=1)  # 6 questions x 6 styles x 2 samples = 72 paths
    with StubChatServer(latency_s=0.04) as server:
        full = write_cfg(tmp_path, "full", server.url)
        subprocess.run(cli(full), check=True, env=env(), cwd=tmp_path, timeout=120)

        cut = write_cfg(tmp_path, "cut", server.url)
        log = log_path(tmp_path / "cut" / "pool.jsonl")
        proc = subprocess.Popen(cli(cut), env=env(), cwd=tmp_path, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (log.is_file() and log.read_text().count("\n") >= 15):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        written = log.read_text().count("\n")
        assert 15 <= written < 72, "the kill should land mid-run"
        assert not (tmp_path / "cut" / "pool.jsonl").exists()
        with log.open("a") as fh:  # a torn last line, as a kill during a write leaves
            fh.write('{"id": "synthetic-1-0/cot/0", "respo')

        before = len(server.seen)
        done = subprocess.run(cli(cut), env=env(), cwd=tmp_path, timeout=120, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert len(server.seen) - before == 72 - written  # nothing already logged was asked again
        assert f"already done {written}" in done.stderr

    a = load_pool(tmp_path / "full" / "pool.jsonl").records
    b = load_pool(tmp_path / "cut" / "pool.jsonl").records
    assert len(a) == 72 and len({r.id for r in b}) == 72
    assert [(r.id, r.response, r.sampling) for r in a] == [(r.id, r.response, r.sampling) for r in b]
    assert len({r.response for r in a}) == 72  # per-path seeds: every sample asked differently
