"""qr-ds generate never ends in exit 0 when it failed: a dead or refusing server, empty replies, a
second run on the same output. The teacher is a real HTTP server on loopback."""
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from qr_ds.cli import main
from qr_ds.data.pool import load_pool
from qr_ds.teacher.generate import log_path
from qr_ds.stages import lock_path
from qr_ds.testing.stub_server import StubChatServer, stub_reply

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-test-DO-NOT-LEAK-91c0aa"
N_QUESTIONS = 6  # x 2 styles = 12 paths


def write_cfg(tmp_path, url: str, **teacher) -> str:
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Q{i}: what is {i} plus one?",
                                        "answer": f"#### {i + 1}"}) + "\n" for i in range(N_QUESTIONS)))
    cfg = {"task": "gsm8k", "data": str(data), "out": str(tmp_path / "pool.jsonl"), "styles": ["vanilla", "cot"],
           "teacher": {"backend": "openai", "model": "stub", "base_url": url, "api_key_env": "QR_TEST_KEY",
                       "concurrency": 4, "max_retries": 1, "backoff_s": 0.01, "timeout_s": 60, **teacher}}
    path = tmp_path / "gen.yaml"
    path.write_text(yaml.safe_dump({"generate": cfg}))
    return str(path)


def no_secret_anywhere(tmp_path, captured: str) -> None:
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and SECRET in p.read_text(errors="ignore")]
    assert SECRET not in captured and not leaked, leaked


def test_every_request_failing_exits_non_zero_with_a_summary(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("QR_TEST_KEY", SECRET)
    for fault in ("500", "no_choices"):
        with StubChatServer(faults=lambda prompt, attempt: fault) as server:
            assert main(["generate", write_cfg(tmp_path, server.url), "--no-progress"]) == 1
        err = capfd.readouterr().err
        assert "qr-ds generate: failed: only 0 of 12 planned paths have a response" in err
        assert "failed: 12 x " in err and ("http 500 after 2 tries" in err or "unexpected response shape" in err)
    assert all(r.error for r in load_pool(tmp_path / "pool.jsonl").records)


def test_a_401_stops_at_once_and_no_file_or_stream_holds_the_key(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("QR_TEST_KEY", SECRET)
    with StubChatServer(faults=lambda prompt, attempt: "401") as server:
        assert main(["generate", write_cfg(tmp_path, server.url), "--no-progress"]) == 1
        assert len(server.seen) == 1  # one request: not one per path, not retries
    out, err = capfd.readouterr()
    assert "http 401: 'Incorrect API key provided: <redacted>'" in err and "env var QR_TEST_KEY" in err
    no_secret_anywhere(tmp_path, out + err)


def test_an_error_body_echoing_the_key_is_stored_redacted(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("QR_TEST_KEY", SECRET)
    with StubChatServer(faults=lambda prompt, attempt: "400") as server:
        assert main(["generate", write_cfg(tmp_path, server.url), "--no-progress"]) == 1
        assert len(server.seen) == 12  # a 400 concerns one request: the others are still asked, once each
    pool = load_pool(tmp_path / "pool.jsonl").records
    assert {r.error for r in pool} == {"http 400: bad request for key <redacted>"}
    assert "<redacted>" in log_path(tmp_path / "pool.jsonl").read_text()
    out, err = capfd.readouterr()
    assert "failed: 12 x http 400: bad request for key <redacted>" in err
    no_secret_anywhere(tmp_path, out + err)


def test_an_empty_reply_is_a_failure_that_is_retried(tmp_path, monkeypatch):
    monkeypatch.setenv("QR_TEST_KEY", SECRET)
    with StubChatServer(faults=lambda prompt, attempt: "empty" if attempt == 0 else "ok") as server:
        assert main(["generate", write_cfg(tmp_path, server.url), "--no-progress"]) == 0
        assert len(server.seen) == 24
    pool = load_pool(tmp_path / "pool.jsonl").records
    assert len(pool) == 12 and all(r.ok and r.response.startswith("Stub reply") and r.meta["tries"] == 2 for r in pool)

    again = tmp_path / "again"
    again.mkdir()
    with StubChatServer(faults=lambda prompt, attempt: "empty") as server:  # never anything but empty
        assert main(["generate", write_cfg(again, server.url), "--no-progress"]) == 1
    assert {r.error for r in load_pool(again / "pool.jsonl").records} == {"empty reply after 2 tries"}


def cli(cfg: str) -> list[str]:
    return [sys.executable, "-m", "qr_ds", "generate", cfg, "--no-progress"]


def test_a_second_run_on_the_same_output_is_refused(tmp_path, monkeypatch, capfd):
    """The first run is held inside its first request (the server answers only once released), so
    the second run meets a run that is certainly still going, however slow the machine."""
    monkeypatch.setenv("QR_TEST_KEY", SECRET)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    release = threading.Event()

    def held_reply(prompt, seed):
        release.wait(timeout=300)
        return stub_reply(prompt, seed)

    with StubChatServer(reply=held_reply) as server:
        cfg = write_cfg(tmp_path, server.url, concurrency=1, timeout_s=300)
        first = subprocess.Popen(cli(cfg), env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not server.seen:  # asking: it holds the lock
            time.sleep(0.02)
        try:
            assert server.seen, first.stderr.read() if first.poll() is not None else "the first run never asked"
            assert main(["generate", cfg, "--no-progress"]) == 1
        finally:
            release.set()
        err = capfd.readouterr().err
        assert f"another run (pid {first.pid} on {socket.gethostname()}) is writing this output: {lock_path(tmp_path / 'pool.jsonl')} is held" in err
        assert first.wait(timeout=120) == 0, first.stderr.read()
        prompts = [s.prompt for s in server.seen]
        assert len(prompts) == 12 == len(set(prompts))  # no path asked twice
    assert not lock_path(tmp_path / "pool.jsonl").exists()  # released at the end


def test_a_stale_lock_from_a_dead_run_is_taken_over_with_a_note(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("QR_TEST_KEY", SECRET)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path(tmp_path / "pool.jsonl").write_text(f"{dead.pid}\n")
    with StubChatServer() as server:
        assert main(["generate", write_cfg(tmp_path, server.url), "--no-progress"]) == 0
    assert f"note: took over {lock_path(tmp_path / 'pool.jsonl')}, left by pid {dead.pid}" in capfd.readouterr().err
    assert len(load_pool(tmp_path / "pool.jsonl").records) == 12


def test_every_teacher_backend_names_a_teacher_and_an_unknown_one_is_refused():
    from importlib import import_module

    from qr_ds.teacher.backends import make_teacher
    from qr_ds.teacher.config import BACKENDS, TeacherConfig

    for spec in BACKENDS.values():
        module, _, name = spec.partition(":")
        assert callable(getattr(import_module(module), name).run)
    with pytest.raises(ValueError, match="no teacher backend 'carrier-pigeon'"):
        make_teacher(TeacherConfig(backend="carrier-pigeon"))
