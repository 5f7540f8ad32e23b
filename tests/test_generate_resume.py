"""SIGKILL a real `python -m qr_ds generate` mid-run, resume, and get the uninterrupted pool."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from qr_ds.data.pool import load_pool
from qr_ds.tasks import write_synthetic
from qr_ds.teacher.generate import log_path
from qr_ds.testing.stub_server import StubChatServer, stub_reply

pytestmark = pytest.mark.slow  # three `qr-ds generate` processes

ROOT = Path(__file__).resolve().parents[1]
HELD_AFTER = 20  # replies the killed run gets: where the kill lands, by count rather than by timing


class HoldAfter:
    """The stub's reply: once ``limit`` is set, replies past it wait until ``release`` is set."""

    def __init__(self):
        self.limit, self.count, self.release, self.lock = None, 0, threading.Event(), threading.Lock()

    def __call__(self, prompt: str, seed: int | None) -> str:
        with self.lock:
            self.count += 1
            held = self.limit is not None and self.count > self.limit
        if held:
            self.release.wait(timeout=300)
        return stub_reply(prompt, seed)


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
    reply = HoldAfter()
    with StubChatServer(reply=reply) as server:
        full = write_cfg(tmp_path, "full", server.url)
        subprocess.run(cli(full), check=True, env=env(), cwd=tmp_path, timeout=120)

        cut = write_cfg(tmp_path, "cut", server.url)
        log = log_path(tmp_path / "cut" / "pool.jsonl")
        reply.count, reply.limit = 0, HELD_AFTER
        proc = subprocess.Popen(cli(cut), env=env(), cwd=tmp_path, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (log.is_file() and log.read_text().count("\n") >= HELD_AFTER):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # mid-run: the next replies are held
        proc.wait(timeout=30)
        reply.limit = None
        reply.release.set()
        written = log.read_text().count("\n")
        assert written == HELD_AFTER, "the kill should land mid-run"
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
