"""Filter, embed, report routing and eval scoring stream the pool: their outputs equal what the whole
pool in memory gives, and their peak memory does not grow with the pool (measured in subprocesses
at N and 10N paths: a size ratio with a wide margin, no timing)."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from qr_ds.config import from_dict, load_config
from qr_ds.data.pool import PoolStream, load_pool, write_pool
from qr_ds.embed.config import EmbedConfig
from qr_ds.embed.lookup import gather_embeddings, load_matrix, text_hash
from qr_ds.embed.run import run_embed
from qr_ds.eval.scoring import teacher_rows
from qr_ds.filter.config import FilterConfig
from qr_ds.filter.run import example_of, run_filter
from qr_ds.report.runs import final_routing
from qr_ds.routing.policy import RoutingPolicy
from qr_ds.run_layout import RunDir
from qr_ds.tasks import Example, get_task
from qr_ds.testing.builders import ROOT, synthetic_records
from qr_ds.train.config import TrainConfig
from qr_ds.train.encoding import select_paths

sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_scale import StubEncoder, make_run, write_pool as write_scale_pool  # noqa: E402


def test_pool_stream_refuses_and_quarantines_as_load_pool(tmp_path):
    path = tmp_path / "pool.jsonl"
    good = [r.to_json() for r in synthetic_records(2)]
    lines = [json.dumps(good[0]).encode(), b"{not json", json.dumps({**good[1], "sample": -1}).encode(), b"",
             b"[1]", b'{"id": "\xff\xfe"}', json.dumps(good[2]).encode(), json.dumps({**good[3], "extra": 1}).encode()]
    path.write_bytes(b"\n".join(lines) + b"\r\n")
    said_whole, said_stream = [], []
    whole = load_pool(path, log=said_whole.append)
    quarantined = (path.parent / (path.name + ".quarantine.jsonl")).read_text()
    (path.parent / (path.name + ".quarantine.jsonl")).unlink()
    stream = PoolStream(path, log=said_stream.append)
    got = list(stream)
    assert [n for n, _ in got] == whole.lines == [1, 7]
    assert [r for _, r in got] == whole.records
    assert stream.rejected == whole.rejected and len(stream.rejected) == 5
    assert stream.accepted == 2 and stream.quarantine == whole.quarantine
    assert stream.quarantine.read_text() == quarantined
    assert said_stream == said_whole


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A generated-pool file (answers not yet checked, one in twelve wrong) of 600 paths."""
    d = tmp_path_factory.mktemp("stream")
    write_scale_pool(d / "pool.jsonl", 600)
    return d / "pool.jsonl"


def test_filter_output_equals_the_pool_checked_in_memory(pool, tmp_path):
    cfg = from_dict(FilterConfig, {"pool": str(pool), "out": str(tmp_path / "f.jsonl"), "judge": {"backend": "none"}})
    res = run_filter(cfg, progress=False)
    task, expected = get_task("synthetic"), []
    for r in load_pool(pool).records:
        r.answer = task.extract(r.response, example_of(r))
        r.correct = task.is_correct(r.answer, example_of(r))
        if r.correct:
            expected.append(r)
    assert 0 < len(expected) < 600 and res.kept == len(expected)
    want = tmp_path / "want.jsonl"
    write_pool(want, expected)
    assert cfg.out.read_bytes() == want.read_bytes()
    assert res.rows[-1]["paths"] == 600 and res.rows[-1]["correct"] == len(expected)


def test_embed_matrix_and_routing_equal_the_whole_pool_results(pool, tmp_path, monkeypatch):
    # duplicated texts share a row: the matrix has one row per distinct text, in pool order
    recs = load_pool(pool).records
    for r in recs[::7]:
        r.response = recs[0].response
    src = tmp_path / "dup.jsonl"
    write_pool(src, recs)
    cfg = from_dict(EmbedConfig, {"pool": str(src), "out": str(tmp_path / "e.jsonl"), "cache_dir": str(tmp_path / "c")})
    enc = StubEncoder()
    res = run_embed(cfg, encoder=enc, progress=False)
    distinct = list(dict.fromkeys(r.response for r in recs))
    assert res.unique_texts == len(distinct) < len(recs) and enc.calls == len(distinct)
    m = load_matrix(cfg.out, "e.npy")
    np.testing.assert_array_equal(m, StubEncoder().encode(distinct, 64))
    out = load_pool(cfg.out).records
    assert [r.embedding.row for r in out] == [distinct.index(r.response) for r in recs]
    assert all(r.embedding.text_hash == text_hash(r.response) for r in out)
    # a second run takes every vector from the cache and writes the same bytes
    before = (cfg.out.read_bytes(), (tmp_path / "e.npy").read_bytes())
    assert run_embed(cfg, encoder=StubEncoder(), progress=False).encoded == 0
    assert (cfg.out.read_bytes(), (tmp_path / "e.npy").read_bytes()) == before

    # routing, streamed in batches of 64 with every fifth path dropped by the selection: the report's
    # probabilities equal the router over the selected paths' matrix at once
    for i, r in enumerate(out):
        r.correct = i % 5 != 0
    write_pool(cfg.out, out)
    monkeypatch.setattr("qr_ds.report.runs.ROUTE_BATCH", 64)
    run = make_run(tmp_path / "run", cfg.out)
    routing = final_routing(run)
    tc = load_config(TrainConfig, RunDir(run).config)
    chosen = select_paths(tc, out)
    assert len(chosen) == 480
    policy = RoutingPolicy(tc.router, m.shape[1], 2, tc.lambda1, 0, pool_sample=torch.randn(64, m.shape[1]))
    policy.load_state_dict(torch.load(RunDir(run).require_latest().component("router"), weights_only=True))
    whole = policy.probabilities(torch.from_numpy(gather_embeddings(cfg.out, chosen))).numpy()
    np.testing.assert_allclose(routing["probabilities"], whole, rtol=0, atol=1e-6)
    assert routing["styles"] == [r.style for r in chosen] and routing["levels"] == [r.level for r in chosen]


def test_routing_shows_a_path_the_answer_check_keeps_from_a_student_at_p_0_for_it_alone(pool, tmp_path):
    """The trainer lists the pairs data.drop_cut_wrong keeps out (RUN/kept_from_students.jsonl): the report
    shows them at P 0 (never trained on) where the router says ~0.97, counts them, and names a bad row."""
    from bench_scale import STUDENTS

    cfg = from_dict(EmbedConfig, {"pool": str(pool), "out": str(tmp_path / "e.jsonl"), "cache_dir": str(tmp_path / "c")})
    run_embed(cfg, encoder=StubEncoder(), progress=False)
    out = load_pool(cfg.out).records
    for r in out:
        r.correct = True
    write_pool(cfg.out, out)
    run = RunDir(make_run(tmp_path / "run", cfg.out))
    before = final_routing(run.root)
    assert before["kept_out"] is None, "a run without the list says so, not 'none kept'"
    kept = [out[3].id, out[8].id]
    run.kept_from.write_text("".join(json.dumps({"student": STUDENTS[0], "path": i}) + "\n" for i in kept))
    after = final_routing(run.root)
    ids = [r.id for r in select_paths(load_config(TrainConfig, run.config), out)]
    rows = [ids.index(i) for i in kept]
    assert (before["probabilities"][rows, 0] > 0.5).all() and (after["probabilities"][rows, 0] == 0).all()
    others = np.ones(len(ids), bool)
    others[rows] = False
    np.testing.assert_array_equal(after["probabilities"][others], before["probabilities"][others])
    np.testing.assert_array_equal(after["probabilities"][:, 1], before["probabilities"][:, 1])
    assert after["kept_out"] == {STUDENTS[0]: 2, STUDENTS[1]: 0}
    from qr_ds.report.build import kept_out_lines

    said = "".join(kept_out_lines({"s0": {"kept_out": after["kept_out"]}, "s1": {"kept_out": {"a": 0, "b": 0}},
                                   "old": {"kept_out": None}}))
    assert "count at P 0 for it, whatever its router said: s0: 2 of a's paths." in said and "s1" not in said
    assert "old: written before the trainer listed" in said
    assert kept_out_lines({"s0": {"kept_out": {"a": 0, "b": 0}}}) == []
    run.kept_from.write_text(run.kept_from.read_text() + json.dumps({"student": "nobody", "path": kept[0]}) + "\n")
    with pytest.raises(ValueError, match=r"kept_from_students.jsonl:3: not a row"):
        final_routing(run.root)


def test_routing_names_the_first_selected_path_without_a_vector(pool, tmp_path):
    cfg = from_dict(EmbedConfig, {"pool": str(pool), "out": str(tmp_path / "e.jsonl"), "cache_dir": str(tmp_path / "c")})
    run_embed(cfg, encoder=StubEncoder(), progress=False)
    out = load_pool(cfg.out).records
    for r in out:
        r.correct = True
    out[5].embedding.text_hash = "0" * 24  # a vector that belongs to another text
    write_pool(cfg.out, out)
    with pytest.raises(ValueError, match=rf"e.jsonl:6: record '{out[5].id}'"):
        final_routing(make_run(tmp_path / "run", cfg.out))


def test_scoring_rows_equal_the_whole_pool_rows(pool):
    rows = list(teacher_rows(pool, ["synthetic"]))
    task = get_task("synthetic")
    want = []
    for r in load_pool(pool).records:
        ex = Example(id=r.question_id, task=r.task, question=r.question, gold=r.gold, level=r.level)
        pred = task.extract(r.response, ex)
        want.append({"checkpoint": "teacher", "student": r.teacher, "task": r.task, "id": r.id, "question": r.question, "extracted": pred,
                     "gold": r.gold, "correct": bool(task.is_correct(pred, ex))})
    assert rows == want and 0 < sum(not r["correct"] for r in rows) < len(rows)
    from qr_ds.eval.run import teacher_split
    from qr_ds.eval.scoring import summarize

    test = [Example(id="t", task="synthetic", question=want[7]["question"], gold="0")]
    on_test, pool_only = teacher_split(pool, {"synthetic": test})  # one question scored, the rest summarized
    assert on_test == [w for w in want if w["question"] == want[7]["question"]] and len(on_test) >= 1
    assert pool_only == summarize([w for w in want if w["question"] != want[7]["question"]], ["synthetic"])


CHILD = textwrap.dedent("""
    import re, sys
    from pathlib import Path
    sys.path.insert(0, {bench!r})
    from bench_scale import StubEncoder, make_run
    from qr_ds.config import from_dict
    d, stage = Path(sys.argv[1]), sys.argv[2]
    if stage == "filter":
        from qr_ds.filter.config import FilterConfig
        from qr_ds.filter.run import run_filter
        run_filter(from_dict(FilterConfig, {{"pool": str(d / "pool.jsonl"), "out": str(d / "f.jsonl"),
                                            "judge": {{"backend": "none"}}}}), progress=False)
    elif stage == "embed":
        from qr_ds.embed.config import EmbedConfig
        from qr_ds.embed.run import run_embed
        run_embed(from_dict(EmbedConfig, {{"pool": str(d / "f.jsonl"), "out": str(d / "e.jsonl")}}),
                  encoder=StubEncoder(), progress=False)
    elif stage == "routing":
        from qr_ds.report.runs import final_routing
        final_routing(make_run(d / "run", d / "e.jsonl"))
    elif stage == "scoring":
        from qr_ds.eval.run import teacher_split
        teacher_split(d / "pool.jsonl", {{"synthetic": []}})
    elif stage == "prepare":
        from transformers import AutoTokenizer
        from qr_ds.train.config import TrainConfig
        from qr_ds.train.prepared import ensure_prepared
        toks = d.parent / "tok-{{}}"
        cfg = from_dict(TrainConfig, {{"students": [{{"name": s, "model": str(d / s), "tokenizer": str(toks).format(s)}}
                                                  for s in "ab"], "data": {{"pool": str(d / "e.jsonl")}},
                                     "router": {{"enabled": True}}, "output_dir": str(d / "train")}})
        ensure_prepared(cfg, [AutoTokenizer.from_pretrained(str(toks).format(s)) for s in "ab"], log=print)
    print(int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024)
""").format(bench=str(ROOT / "benchmarks"))


def peak_rss(d, stage) -> int:
    p = subprocess.run([sys.executable, "-c", CHILD, str(d), stage], capture_output=True, text=True, timeout=600,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                            "TOKENIZERS_PARALLELISM": "false"})
    assert p.returncode == 0, p.stderr[-2000:]
    return int(p.stdout.split()[-1])


# Above the largest batch any stage holds (the filter's judge chunk of 4096 paths), so the small run's peak
# already has it.
SMALL = 4200


@pytest.mark.slow  # ten stage subprocesses, two of them on 42k paths
def test_peak_memory_does_not_grow_with_the_pool(tmp_path):
    """At 10x the paths, each stage's peak RSS grows by less than half the added pool's size on disk.
    A stage holding the pool grows by more than its size: before streaming, 2.2x (filter), 2.1x
    (embed) and 3.1x (routing) of it (benchmarks/results/scale-before-cpu.json, 10k -> 100k paths of 1.47 KB);
    the training data builder held 42 KB per path (the issue's measurement)."""
    from bench_scale import make_tokenizers

    sizes, peaks = {}, {}
    stages = ("filter", "embed", "routing", "scoring", "prepare")
    for n in (SMALL, 10 * SMALL):
        d = tmp_path / f"n{n}"
        d.mkdir()
        write_scale_pool(d / "pool.jsonl", n)
        if n == SMALL:
            make_tokenizers(tmp_path, d / "pool.jsonl")
        sizes[n] = (d / "pool.jsonl").stat().st_size
        peaks[n] = {stage: peak_rss(d, stage) for stage in stages}
    added = sizes[10 * SMALL] - sizes[SMALL]
    assert added > 50 * 2**20
    for stage in stages:
        grew = peaks[10 * SMALL][stage] - peaks[SMALL][stage]
        assert grew < 0.5 * added, (stage, grew / 2**20, added / 2**20)
