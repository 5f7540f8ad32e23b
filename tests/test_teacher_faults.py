"""The HTTP teacher against a real fault-injecting server on loopback: retries, reasons, resume."""
import json
import time

import yaml

from qr_ds.cli import main
from qr_ds.data.pool import load_pool
from qr_ds.teacher.config import GenerateConfig
from qr_ds.config import from_dict
from qr_ds.teacher.generate import generate, log_path
from qr_ds.teacher.openai_http import parse_retry_after
from qr_ds.testing.stub_server import StubChatServer

SECRET = "sk-test-DO-NOT-LEAK-8f3a1c"
# question i -> what the server does on each try (last entry repeats)
PLAN = {0: ["ok"], 1: ["429", "ok"], 2: ["500"], 3: ["hang"], 4: ["malformed"], 5: ["truncated"]}
EXPECTED_ERROR = {2: "http 500 after 2 tries", 3: "timeout after 2 tries",
                  4: "malformed JSON after 2 tries", 5: "truncated body after 2 tries"}


# A reply slower than this is a timeout: far above any healthy reply on a busy machine; a "hang" holds
# its reply three times as long.
CLIENT_TIMEOUT_S = 10


def qnum(prompt: str) -> int:
    return int(prompt.split("Q", 1)[1].split(":", 1)[0])


def faults(prompt: str, attempt: int) -> str:
    actions = PLAN[qnum(prompt)]
    return actions[min(attempt, len(actions) - 1)]


def make_cfg(tmp_path, url: str) -> dict:
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Q{i}: what is {i} plus one?",
                                        "answer": f"#### {i + 1}"}) + "\n" for i in PLAN))
    # 8 of 12 paths fail on purpose: lower the bar below the 4 that succeed
    return {"task": "gsm8k", "data": str(data), "out": str(tmp_path / "pool.jsonl"), "styles": ["vanilla", "cot"],
            "min_success_share": 0.3,
            "teacher": {"backend": "openai", "model": "stub-model", "base_url": url, "api_key_env": "QR_TEST_KEY",
                        "concurrency": 4, "timeout_s": CLIENT_TIMEOUT_S, "max_retries": 1, "backoff_s": 0.05,
                        "sampling": {"temperature": 0.0, "max_tokens": 64}}}


def test_faults_reasons_retry_after_resume_and_no_key_leak(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("QR_TEST_KEY", SECRET)
    with StubChatServer(faults=faults, hang_s=3 * CLIENT_TIMEOUT_S, retry_after="1") as server:
        raw = make_cfg(tmp_path, server.url)
        cfg = from_dict(GenerateConfig, raw)
        stats = generate(cfg, progress=True)

        pool = load_pool(cfg.out).records
        assert len(pool) == 12 and len({r.id for r in pool}) == 12
        for r in pool:
            q = int(r.question_id[1:])
            if q in EXPECTED_ERROR:
                assert r.response is None and r.error == EXPECTED_ERROR[q], r
            else:
                assert r.ok and r.response.startswith("Stub reply"), r
                assert r.meta["tokens_out"] > 0 and r.sampling["max_tokens"] == 64
        assert stats.requests == 12 and sum(stats.failures.values()) == 8
        assert stats.tokens_out == sum(r.meta["tokens_out"] for r in pool)
        assert "failed: 2 x http 500 after 2 tries" in stats.summary()

        # Retry-After: 1 was honoured although the configured backoff is 0.05 s
        for style in ("vanilla", "cot"):
            tries = [s.at for s in server.seen if qnum(s.prompt) == 1 and s.prompt.startswith(
                "Reason" if style == "vanilla" else "Q")]
            assert len(tries) == 2 and tries[1] - tries[0] >= 0.95
        assert all(s.authorization == f"Bearer {SECRET}" for s in server.seen)

        # second run, through the CLI, with a healthy server: only the 8 failed paths are asked again
        server.faults = lambda prompt, attempt: "ok"
        before = len(server.seen)
        cfg_file = tmp_path / "gen.yaml"
        cfg_file.write_text(yaml.safe_dump({"generate": raw}))
        assert main(["generate", str(cfg_file), "--no-progress"]) == 0
        asked = server.seen[before:]
        assert len(asked) == 8 and {qnum(s.prompt) for s in asked} == set(EXPECTED_ERROR)

    pool = load_pool(cfg.out).records
    assert len(pool) == 12 and len({r.id for r in pool}) == 12 and all(r.ok for r in pool)
    assert sum(1 for _ in open(log_path(cfg.out))) == 20  # the log keeps both runs' records
    out, err = capfd.readouterr()
    assert "already done 4, requested 8" in err and "tokens out" in err
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and SECRET in p.read_text(errors="ignore")]
    assert SECRET not in out + err and not leaked


def test_parse_retry_after_forms():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    start = time.time()
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(start + 30))
    waited = parse_retry_after(date)
    # the date has whole seconds; whatever time passed since `start` is already off the wait
    assert start + 29 - time.time() <= waited <= 30
