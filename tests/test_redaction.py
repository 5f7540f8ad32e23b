"""Secrets by shape, not only by value (issue 23): a key inside base_url's userinfo, the Basic value a
server echoes back, and a key pasted as api_key_env never reach a record, a log, a cache, a retention
file or either stream. generate and filter run in process against the real loopback HTTP server;
every file under the run's folder and both captured streams are searched."""
import base64
import json
import re
import socket

import pytest
import yaml

from qr_ds.cli import main
from qr_ds.testing.stub_server import StubChatServer

SECRET = "SECRETKEY"
BASIC = base64.b64encode(f"user:{SECRET}".encode()).decode()
N_QUESTIONS = 4


def reply(prompt: str, seed) -> str:
    """Right answers for the teacher, VALID for the judge: every path reaches filtered.jsonl."""
    if "hallucinated or spurious" in prompt:
        return '{"verdict": "VALID", "reason": "every step follows"}'
    i = int(re.search(r"Q(\d+):", prompt).group(1))
    return f"{i} plus one is {i + 1}.\nThe answer is {i + 1}."


def with_key(url: str) -> str:
    return url.replace("http://", f"http://user:{SECRET}@")


def configs(tmp_path, teacher_url: str, judge_url: str, **teacher) -> str:
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Q{i}: what is {i} plus one?",
                                        "answer": f"#### {i + 1}"}) + "\n" for i in range(N_QUESTIONS)))
    http = {"backend": "openai", "model": "stub", "concurrency": 2, "max_retries": 1, "backoff_s": 0.01, "timeout_s": 60}
    cfg = {"generate": {"task": "gsm8k", "data": str(data), "out": str(tmp_path / "run" / "pool.jsonl"),
                        "styles": ["vanilla", "cot"], "teacher": {**http, "base_url": teacher_url, **teacher}},
           "filter": {"pool": str(tmp_path / "run" / "pool.jsonl"), "out": str(tmp_path / "run" / "filtered.jsonl"),
                      "judge": {**http, "base_url": judge_url}}}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def assert_nowhere(tmp_path, streams: str, *secrets: str) -> list:
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    for secret in secrets:
        assert secret not in streams, streams
        leaked = [str(p) for p in files if secret in p.read_text(errors="ignore")]
        assert not leaked, (secret, leaked)
    return files


def test_a_key_in_the_url_authenticates_and_is_written_nowhere(tmp_path, capfd):
    with StubChatServer(reply=reply) as server:
        cfg = configs(tmp_path, with_key(server.url), with_key(server.url))
        assert main(["generate", cfg, "--no-progress"]) == 0
        assert main(["filter", cfg, "--no-progress"]) == 0
        assert {s.authorization for s in server.seen} == {f"Basic {BASIC}"}  # the credentials were used
    out, err = capfd.readouterr()
    files = assert_nowhere(tmp_path, out + err, SECRET, BASIC, "user:")
    names = {p.name for p in files}
    assert {"pool.jsonl", "pool.log.jsonl", "filtered.jsonl", "filtered.judge.jsonl",
            "filtered.retention.md", "filtered.retention.json"} <= names, names
    kept = [json.loads(line) for line in (tmp_path / "run" / "filtered.jsonl").read_text().splitlines()]
    assert len(kept) == 2 * N_QUESTIONS and kept[0]["judge"]["model"] == f"openai stub at {server.url}"


def test_a_401_echoing_the_basic_value_prints_neither_key_nor_url_credentials(tmp_path, capfd):
    with StubChatServer(faults=lambda prompt, attempt: "401") as server:
        assert main(["generate", configs(tmp_path, with_key(server.url), server.url), "--no-progress"]) == 1
        assert len(server.seen) == 1
    out, err = capfd.readouterr()
    assert "http 401: 'Incorrect API key provided: Basic <redacted>'" in err, err
    assert f"{server.url}/chat/completions refused the request" in err
    assert_nowhere(tmp_path, out + err, SECRET, BASIC, "user:")


@pytest.mark.parametrize("teacher,needle,status", [
    ({"api_key_env": f"sk-{SECRET}-0123456789abcdef"},
     "config key 'teacher.api_key_env': the value looks like an API key, not the name of an env var", 2),
    ({"base_url": "127.0.0.1:8000/v1"}, "config key 'teacher.base_url': '127.0.0.1:8000/v1' is not an http(s) URL", 2),
])
def test_a_key_as_env_name_and_a_url_without_scheme_are_refused_at_load(tmp_path, capfd, teacher, needle, status):
    assert main(["generate", configs(tmp_path, "http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1", **teacher)]) == status
    out, err = capfd.readouterr()
    assert needle in err and "Traceback" not in err, err
    assert SECRET not in out + err and not (tmp_path / "run").exists()


def test_a_port_that_never_answered_stops_at_once_naming_key_and_url(tmp_path, capfd):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    assert main(["generate", configs(tmp_path, with_key(url), url, max_retries=50, backoff_s=5), "--no-progress"]) == 2
    out, err = capfd.readouterr()
    assert (f"config key 'teacher.base_url': cannot connect to {url}/chat/completions" in err
            and "Stopped before any retry" in err), err
    assert_nowhere(tmp_path, out + err, SECRET, "user:")


def test_a_reply_keeps_prose_shaped_like_a_secret(tmp_path, capfd):
    """Redaction by shape is for what servers and libraries say: a path that reads "basic algebra: 2x"
    or cites a URL with userinfo is the teacher's text, training data, and reaches the pool unchanged."""
    prose = ("We use basic algebra: 2x = 10. Each token counts once; see ftp://guest@mirror.example/x.\n"
             "The answer is 5.")
    with StubChatServer(reply=lambda prompt, seed: prose) as server:
        cfg = configs(tmp_path, with_key(server.url), with_key(server.url))
        assert main(["generate", cfg, "--no-progress"]) == 0
    out, err = capfd.readouterr()
    assert_nowhere(tmp_path, out + err, SECRET, BASIC)
    pool = [json.loads(line) for line in (tmp_path / "run" / "pool.jsonl").read_text().splitlines()]
    assert len(pool) == 2 * N_QUESTIONS and {r["response"] for r in pool} == {prose}
