"""Training data prepared once per node: the mapped arrays hold what the in-memory encoding gives, a
resume reuses the folder, a changed pool gets a new one, and a node's other ranks wait for local
rank 0's build (or end with its error) in real separate processes."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from qr_ds.testing import builders as trainkit

ROOT = trainkit.ROOT
# What a rank does before its first collective: load the config and tokenizers, build TrainData.
RANK_SCRIPT = """
import sys
from qr_ds.config import load_config
from qr_ds.train.config import TrainConfig
from qr_ds.train.data import TrainData
from qr_ds.train.student import load_tokenizer
cfg = load_config(TrainConfig, sys.argv[1])
d = TrainData(cfg, [load_tokenizer(s) for s in cfg.students], lambda m: print(m, flush=True))
print("FOLDER", d.prepared.folder, len(d), flush=True)
"""


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    d = tmp_path_factory.mktemp("prep")
    pool = trainkit.make_pool(d / "pool", n_questions=5)
    return d, pool, trainkit.make_students(d / "students", pool)


def _cfg(kit, name, **over):
    from qr_ds.config import load_config
    from qr_ds.train.config import TrainConfig

    d, pool, studs = kit
    path = trainkit.write_config(d / f"{name}.yaml", studs, pool, d / name, **over)
    c = yaml.safe_load(path.read_text())
    c["students"][1]["max_len"] = 120  # one student cuts paths: truncation and unseen text are stored too
    path.write_text(yaml.safe_dump(c))
    return path, load_config(TrainConfig, path)


def _tokenizers(cfg):
    from qr_ds.train.student import load_tokenizer

    return [load_tokenizer(s) for s in cfg.students]


def test_mapped_data_equals_the_in_memory_encoding(kit):
    from qr_ds.data.pool import load_pool, record_lines
    from qr_ds.embed.lookup import gather_embeddings
    from qr_ds.train.data import TrainData, unseen_nats_of
    from qr_ds.train.encoding import encode_all, select_paths

    _, cfg = _cfg(kit, "equal", data={"pool": str(kit[1]), "max_len": 256, "paths_per_question": 4})
    toks = _tokenizers(cfg)
    data = TrainData(cfg, toks, lambda m: None)
    report = load_pool(cfg.data.pool)
    recs = select_paths(cfg, report.records)
    want, want_spans = encode_all(recs, toks, [256, 120], cfg.mutual.max_spans)
    assert len(data) == len(recs) == 20
    for s in range(2):
        got = [data.encoded[s][i] for i in range(len(data))]
        assert [(e.input_ids, e.labels, e.span_ids, e.truncated, e.unseen_chars) for e in got] == \
               [(e.input_ids, e.labels, e.span_ids, e.truncated, e.unseen_chars) for e in want[s]]
    assert any(e.truncated for e in want[1]) and not any(e.truncated for e in want[0])
    assert np.asarray(data.n_spans).tolist() == want_spans
    chars = torch.tensor([max(len(r.response), 1) for r in recs], dtype=torch.float32)
    tokens = [torch.tensor([sum(t != -100 for t in e.labels[1:]) for e in enc]) for enc in want]
    unseen = [torch.tensor([e.unseen_chars for e in enc], dtype=torch.float32) for enc in want]
    assert torch.equal(data.response_chars, chars)
    assert torch.equal(data.unseen_nats, unseen_nats_of(unseen, tokens, [len(t) for t in toks], chars))
    assert (data.unseen_nats[:, 1] > 0).any() and (data.unseen_nats[:, 0] == 0).all()
    assert all(torch.equal(data.response_tokens[s], tokens[s].clamp(min=1).float()) for s in range(2))
    assert torch.equal(data.embeddings, torch.from_numpy(gather_embeddings(cfg.data.pool, recs, record_lines(report))))
    qids = list(dict.fromkeys(r.question_id for r in recs))
    assert data.question_index.tolist() == [qids.index(r.question_id) for r in recs]
    assert [(p.style, p.level) for p in data.records] == [(r.style, r.level) for r in recs]
    assert data.span_mask(torch.tensor([0, 3]), 8).sum(1).tolist() == [want_spans[0], want_spans[3]]


def test_the_prepared_folder_marks_the_cut_path_that_states_a_wrong_answer(kit, tmp_path):
    """One path planted with a wrong interim answer and a long check before its right ending: both
    students' contexts cut it after the wrong answer, so both are marked for it, and no other path."""
    from qr_ds.train.data import TrainData

    recs = trainkit.synthetic_records(5)
    wrong = str(int(recs[0].gold) + 1)
    recs[0].response = (f"Let me solve this.\nThe answer is {wrong}.\n" + "Now a careful check of every step. " * 60
                        + recs[0].response)
    pool = trainkit.embedded_pool(tmp_path / "pool", recs)
    _, cfg = _cfg(kit, "planted", data={"pool": str(pool), "max_len": 256, "paths_per_question": 4})
    data = TrainData(cfg, _tokenizers(cfg), lambda m: None)
    assert data.cut_wrong[0].tolist() == [True, True]
    assert int(data.cut_wrong.sum()) == 2


def test_a_cut_path_that_states_a_wrong_answer_before_the_cut_is_marked():
    """The answer check on what a short-context student sees: a wrong interim answer before the cut
    marks the path for that student; an answer stated only after the cut, a right one before it, an
    uncut path and a path cut before any answer do not."""
    from qr_ds.data.pool import PathRecord
    from qr_ds.train.encoding import cut_states_wrong_answer

    def rec(response):
        return PathRecord(id="q-0", task="synthetic", question_id="q", question="?", gold="12", teacher="t",
                          style="backward", sample=0, prompt="?", response=response)

    early_wrong = rec("Let me solve this.\nThe answer is 7.\nA check finds a slip.\nThe verified answer is 12.")
    after = len(early_wrong.response) - early_wrong.response.index("A check")
    assert cut_states_wrong_answer(early_wrong, after)
    assert not cut_states_wrong_answer(early_wrong, 0)  # uncut: the filter judged the final answer
    assert not cut_states_wrong_answer(early_wrong, len(early_wrong.response) - len("Let me solve this.\n"))
    early_right = rec("Let me solve this.\nThe answer is 12.\nA check agrees.\nThe verified answer is 12.")
    assert not cut_states_wrong_answer(early_right, len(early_right.response) - early_right.response.index("A check"))
    # a cut inside a line reads nothing of it: the number may go on past the cut, a step is no bare answer
    mid_number = rec("Let me solve this.\nThe answer is 12.\nA check agrees.")
    assert not cut_states_wrong_answer(mid_number, len(mid_number.response) - len("Let me solve this.\nThe answer is 1"))
    step = rec("1. **Read the question:** 12 is asked for.\nThe answer is 12.")
    assert not cut_states_wrong_answer(step, len(step.response) - len("1. **R"))
    # whole sentences are read: a wrong answer cut just before its line break, or earlier on the cut line
    assert cut_states_wrong_answer(early_wrong, len(early_wrong.response) - len("Let me solve this.\nThe answer is 7."))
    one_line = rec("Let me solve this. The answer is 7. Now a careful check finds a slip. The verified answer is 12.")
    assert cut_states_wrong_answer(one_line, len(one_line.response) - one_line.response.index("finds"))
    decimal = rec("Let me solve this.\nThe answer is 7.5 apples.\n")
    assert not cut_states_wrong_answer(decimal, len(decimal.response) - len("Let me solve this.\nThe answer is 7."))
    late = rec("Forward: 3 + 4 = 7.\nThe forward pass ends at 7.\nThe verified answer is 12.")
    assert not cut_states_wrong_answer(late, len("The verified answer is 12."))
    # the filter's own check: a choice stated by its text is read against the question's choices
    choice = PathRecord(id="c-0", task="arc_challenge", question_id="c", question="?", gold="B", teacher="t",
                        style="backward", sample=0, prompt="?", meta={"choices": [["A", "cat"], ["B", "dog"]]},
                        response="The answer is cat.\nA check shows it is dog.\nThe answer is (B).")
    assert cut_states_wrong_answer(choice, len("A check shows it is dog.\nThe answer is (B)."))


def test_resume_reuses_the_folder_and_a_changed_pool_rebuilds(kit, tmp_path):
    d, pool, studs = kit
    own_pool = trainkit.make_pool(tmp_path / "pool", n_questions=3)
    path, cfg = _cfg(kit, "reuse", data={"pool": str(own_pool), "max_len": 256})
    toks = _tokenizers(cfg)
    logs = []
    from qr_ds.train.data import TrainData

    first = TrainData(cfg, toks, logs.append).prepared.folder
    stamp = (first / "ids_0.bin").stat().st_mtime_ns
    assert any(m.startswith("preparing training data") for m in logs)
    logs.clear()
    again = TrainData(cfg, toks, logs.append).prepared.folder
    assert again == first and (first / "ids_0.bin").stat().st_mtime_ns == stamp
    assert any(m.startswith("prepared training data reused") for m in logs)
    assert not any(m.startswith("preparing") for m in logs)

    lines = own_pool.read_text().splitlines(keepends=True)
    own_pool.write_text("".join(lines[:-6]))  # one question fewer
    changed = TrainData(cfg, toks, logs.append)
    assert changed.prepared.folder != first and len(changed) == len(lines) - 6
    assert (first / "meta.json").is_file()  # the earlier preparation is kept, not overwritten
    assert not list(first.parent.glob("*.tmp-*"))  # nothing half-built left behind
    kept = [m for m in logs if "older prepared folder(s)" in m]  # and the new build names it
    assert len(kept) == 1 and kept[0].startswith("1 older") and kept[0].endswith(first.name)

    # another max_len is another key too
    c2 = yaml.safe_load(path.read_text())
    c2["data"]["max_len"] = 200
    path.write_text(yaml.safe_dump(c2))
    from qr_ds.config import load_config
    from qr_ds.train.config import TrainConfig

    assert TrainData(load_config(TrainConfig, path), toks, logs.append).prepared.folder not in (first, changed.prepared.folder)


def _free_port() -> str:
    """A port no other job on the machine holds now (a fixed one may be another launch's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _rank(cfg_path, local_rank: int, port: str):
    env = dict(os.environ, LOCAL_RANK=str(local_rank), RANK=str(local_rank), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=port, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(cfg_path)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_local_rank_1_waits_for_local_rank_0s_build(kit):
    path, cfg = _cfg(kit, "wait")
    port = _free_port()
    waiter = _rank(path, 1, port)
    time.sleep(8)  # long enough to load and hash; it must not build
    assert waiter.poll() is None, waiter.communicate()
    assert not list((cfg.output_dir / "prepared").glob("*/meta.json"))
    builder = _rank(path, 0, port)
    out0, err0 = builder.communicate(timeout=240)
    out1, err1 = waiter.communicate(timeout=60)
    assert builder.returncode == 0 and waiter.returncode == 0, err0[-2000:] + err1[-2000:]
    folder0 = out0.split("FOLDER ")[1].split()[0]
    assert out1.split("FOLDER ")[1].split()[0] == folder0
    assert "preparing training data" in out0 and "preparing" not in out1


@pytest.mark.slow
def test_a_failed_build_ends_the_waiting_ranks_with_its_error(kit, tmp_path):
    d, pool, studs = kit
    bad = tmp_path / "noemb.jsonl"
    from qr_ds.data.pool import write_pool

    write_pool(bad, trainkit.synthetic_records(2))  # no embeddings, router on: the build fails
    path, cfg = _cfg(kit, "fail", data={"pool": str(bad), "max_len": 256})
    port = _free_port()
    waiter = _rank(path, 1, port)
    builder = _rank(path, 0, port)
    _, err0 = builder.communicate(timeout=240)
    _, err1 = waiter.communicate(timeout=60)
    assert builder.returncode != 0 and "no embedding" in err0
    assert waiter.returncode != 0
    assert "failed on" in err1 and "rank 0" in err1 and "no embedding" in err1


def test_prepared_folder_comes_from_the_config_key_then_the_environment_then_the_run(kit, tmp_path, monkeypatch):
    from qr_ds.train.prepared import ENV_DIR, prepared_root

    _, cfg = _cfg(kit, "where")
    monkeypatch.delenv(ENV_DIR, raising=False)
    assert prepared_root(cfg) == Path(cfg.output_dir) / "prepared"
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "env"))
    assert prepared_root(cfg) == tmp_path / "env"
    _, keyed = _cfg(kit, "where", data={"pool": str(kit[1]), "prepared_dir": str(tmp_path / "key")})
    assert prepared_root(keyed) == tmp_path / "key"
