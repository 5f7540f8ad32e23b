"""The filter refuses what would look like success: no judge named, the stand-in on a real task,
a judge that never answered, repeated ids, stale cached verdicts. Judges over HTTP are a real
server on loopback."""
import json

import pytest
import yaml

from qr_ds.cli import main
from qr_ds.config import ConfigError, from_dict
from qr_ds.data.pool import PathRecord, load_pool, write_pool
from qr_ds.filter import judge as judge_module
from qr_ds.filter.config import FilterConfig
from qr_ds.filter.run import NO_JUDGE, judge_log_path, report_paths, run_filter
from qr_ds.tasks import write_synthetic
from qr_ds.teacher.config import GenerateConfig
from qr_ds.teacher.generate import generate
from qr_ds.teacher.scripted import SPURIOUS
from qr_ds.testing.stub_server import StubChatServer

SECRET = "sk-test-DO-NOT-LEAK-4b7e2d"


def gsm8k_pool(path, n=6):
    """Right answers, each after a planted false step: only a real judge can catch it."""
    recs = [PathRecord(id=f"q{i}/cot/0", task="gsm8k", question_id=f"q{i}", question=f"What is {i} plus one?",
                       gold=str(i + 1), teacher="t", style="cot", sample=0, prompt="p",
                       response=f"The Eiffel Tower is in Berlin. {i} + 1 = {i + 1}. The answer is {i + 1}.")
            for i in range(n)]
    write_pool(path, recs)
    return path


def write_yaml(path, section: dict):
    path.write_text(yaml.safe_dump({"filter": section}))
    return str(path)


def test_missing_judge_is_refused_with_how_to_configure_one(tmp_path, capfd):
    pool = gsm8k_pool(tmp_path / "pool.jsonl")
    cfg = write_yaml(tmp_path / "f.yaml", {"pool": str(pool), "out": str(tmp_path / "out.jsonl")})
    assert main(["filter", cfg, "--no-progress"]) == 2
    err = capfd.readouterr().err
    assert "config key 'judge.backend' is not set" in err
    assert "backend: openai" in err and "api_key_env:" in err and "{backend: vllm" in err and "{backend: none}" in err
    assert not (tmp_path / "out.jsonl").exists()
    with pytest.raises(ConfigError, match="is not set"):  # a judge: section that names no backend
        from_dict(FilterConfig, {"pool": "p", "out": "o", "judge": {"model": "m"}})


def test_scripted_judge_is_refused_outside_the_synthetic_task(tmp_path):
    pool = gsm8k_pool(tmp_path / "pool.jsonl")
    cfg = from_dict(FilterConfig, {"pool": str(pool), "out": str(tmp_path / "out.jsonl"), "judge": {"backend": "scripted"}})
    with pytest.raises(ConfigError, match="synthetic task; this pool holds task\\(s\\) gsm8k"):
        run_filter(cfg, progress=False)
    assert not (tmp_path / "out.jsonl").exists()


def test_backend_none_skips_step_2_and_the_table_says_so(tmp_path, capfd):
    pool = gsm8k_pool(tmp_path / "pool.jsonl")
    out = tmp_path / "out.jsonl"
    cfg = write_yaml(tmp_path / "f.yaml", {"pool": str(pool), "out": str(out), "judge": {"backend": "none"}})
    assert main(["filter", cfg, "--no-progress"]) == 0
    assert len(load_pool(out).records) == 6 and all(r.judge is None for r in load_pool(out).records)
    md, js = report_paths(out)
    assert json.loads(js.read_text())["judged_by"] == NO_JUDGE and f"judged by: {NO_JUDGE}" in md.read_text()
    assert f"judged by: {NO_JUDGE}" in capfd.readouterr().err
    assert not judge_log_path(out).exists()


@pytest.fixture()
def synthetic_pool(tmp_path):
    write_synthetic(tmp_path / "syn.jsonl", 4, seed=5)
    cfg = from_dict(GenerateConfig, {"task": "synthetic", "data": str(tmp_path / "syn.jsonl"),
                                     "out": str(tmp_path / "pool.jsonl"), "teacher": {"backend": "scripted"}})
    generate(cfg, progress=False)
    return cfg.out


def test_cache_misses_when_the_path_text_or_the_prompt_changes(synthetic_pool, tmp_path, monkeypatch):
    cfg = from_dict(FilterConfig, {"pool": str(synthetic_pool), "out": str(tmp_path / "out.jsonl"),
                                   "judge": {"backend": "scripted"}})
    first = run_filter(cfg, progress=False)
    n_judged = first.judge.asked
    kept = load_pool(cfg.out).records
    target = kept[0]

    # regenerate one path: same id, same right answer, now with a planted false step
    records = load_pool(synthetic_pool).records
    for r in records:
        if r.id == target.id:
            lines = r.response.splitlines()
            r.response = "\n".join([lines[0], SPURIOUS[0].format(v=12), *lines[1:]])
    write_pool(synthetic_pool, records)
    again = run_filter(cfg, progress=False)
    assert (again.judge.asked, again.judge.cached) == (1, n_judged - 1)
    assert target.id not in {r.id for r in load_pool(cfg.out).records}  # judged afresh: INVALID

    monkeypatch.setattr(judge_module, "JUDGE_PROMPT", judge_module.JUDGE_PROMPT + "\nBe strict.")
    changed_prompt = run_filter(cfg, progress=False)
    assert (changed_prompt.judge.asked, changed_prompt.judge.cached) == (n_judged, 0)


def judge_cfg(tmp_path, pool, url: str, **kw) -> str:
    return write_yaml(tmp_path / "f.yaml", {
        "pool": str(pool), "out": str(tmp_path / "out.jsonl"), "judge_retries": 0, **kw,
        "judge": {"backend": "openai", "model": "judge", "base_url": url, "api_key_env": "QR_TEST_KEY",
                  "concurrency": 3, "max_retries": 1, "backoff_s": 0.01, "timeout_s": 60}})


def test_a_judge_that_never_answers_fails_the_run(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("QR_TEST_KEY", SECRET)
    pool = gsm8k_pool(tmp_path / "pool.jsonl")
    with StubChatServer(faults=lambda prompt, attempt: "500") as server:  # no verdict is not UNPARSEABLE:
        assert main(["filter", judge_cfg(tmp_path, pool, server.url, keep_unparseable=True), "--no-progress"]) == 1
    assert load_pool(tmp_path / "out.jsonl").records == []  # even keep_unparseable keeps no unjudged path
    err = capfd.readouterr().err
    assert "6 of 6 judge requests failed (http 500 after 2 tries)" in err and "no path was kept" in err
    assert "| all | all | 6 | 6 |" in err  # the table still shows where the paths went
    assert not [json.loads(x) for x in judge_log_path(tmp_path / "out.jsonl").read_text().splitlines()]  # nothing cached


def test_a_refused_judge_stops_at_once_and_the_key_is_redacted(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("QR_TEST_KEY", SECRET)
    pool = gsm8k_pool(tmp_path / "pool.jsonl")
    with StubChatServer(faults=lambda prompt, attempt: "401") as server:
        assert main(["filter", judge_cfg(tmp_path, pool, server.url), "--no-progress"]) == 1
        assert len(server.seen) == 1  # not 6 paths, not retries
    out, err = capfd.readouterr()
    assert "http 401: 'Incorrect API key provided: <redacted>'" in err and "QR_TEST_KEY" in err
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and SECRET in p.read_text(errors="ignore")]
    assert SECRET not in out + err and not leaked


def test_a_pool_of_failed_generations_fails_the_run(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("QR_TEST_KEY", SECRET)
    recs = load_pool(gsm8k_pool(tmp_path / "pool.jsonl")).records
    for r in recs:
        r.response, r.error = None, "http 500 after 5 tries"
    write_pool(tmp_path / "pool.jsonl", recs)
    with StubChatServer() as server:
        assert main(["filter", judge_cfg(tmp_path, tmp_path / "pool.jsonl", server.url), "--no-progress"]) == 1
        assert not server.seen  # nothing to judge
    assert "only 0 of 6 pool records have a response" in capfd.readouterr().err


def test_duplicate_ids_are_refused_naming_ids_and_lines(synthetic_pool, tmp_path, capfd):
    lines = synthetic_pool.read_text().splitlines()
    synthetic_pool.write_text("\n".join(lines + [lines[1], lines[3], lines[1]]) + "\n")
    n = len(lines)
    ids = [json.loads(lines[i])["id"] for i in (1, 3)]
    cfg = write_yaml(tmp_path / "f.yaml", {"pool": str(synthetic_pool), "out": str(tmp_path / "out.jsonl"),
                                          "judge": {"backend": "scripted"}})
    assert main(["filter", cfg, "--no-progress"]) == 2
    err = capfd.readouterr().err
    assert f"{synthetic_pool}: 2 path id(s) occur more than once" in err
    assert f"{ids[0]!r} at lines 2, {n + 1}, {n + 3}" in err and f"{ids[1]!r} at lines 4, {n + 2}" in err
    assert not (tmp_path / "out.jsonl").exists()


def test_ids_whose_hashes_clash_are_not_called_repeated(synthetic_pool, monkeypatch):
    """The uniqueness check keeps 8-byte hashes; when every hash clashes, the second pass compares the
    ids themselves: distinct ids pass, and a real repeat is still named with its lines."""
    from qr_ds.filter import run as filter_run

    monkeypatch.setattr(filter_run, "_id_hash", lambda _id: 7)
    lines = synthetic_pool.read_text().splitlines()
    assert filter_run.check_unique_ids(synthetic_pool) == {json.loads(line)["task"] for line in lines}
    synthetic_pool.write_text("\n".join(lines + [lines[2]]) + "\n")
    with pytest.raises(ValueError, match=rf"1 path id\(s\) occur more than once: '[^']+' at lines 3, {len(lines) + 1}\."):
        filter_run.check_unique_ids(synthetic_pool)
