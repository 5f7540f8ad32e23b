"""A stage's output is its own: generate refuses a file at `out` it did not write (a filtered pool, a data
file, a pool without its request log), in --plan too, yet still resumes its own; embed holds the
output lock as generate and filter do."""
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qr_ds.cli import main
from qr_ds.data.pool import EmbeddingRef, PathRecord, load_pool, write_pool
from qr_ds.stages import lock_path
from qr_ds.tasks import write_synthetic
from qr_ds.teacher.config import log_path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "pipeline-synthetic-scripted.yaml"
N_QUESTIONS = 3  # x 6 styles x 2 samples = 36 paths


@pytest.fixture
def data(tmp_path):
    write_synthetic(str(tmp_path / "data.jsonl"), N_QUESTIONS, 0)
    return tmp_path / "data.jsonl"


def gen_args(data: Path, out: Path, *more: str) -> list[str]:
    return ["generate", str(CONFIG), f"data={data}", f"out={out}", "--no-progress", *more]


def no_teacher(monkeypatch):
    def refuse(cfg):
        raise AssertionError("a teacher was made for a refused run")

    monkeypatch.setattr("qr_ds.teacher.generate.make_teacher", refuse)


def filtered_pool(tmp_path, data):
    pool, filtered = tmp_path / "pool.jsonl", tmp_path / "filtered.jsonl"
    assert main(gen_args(data, pool)) == 0
    assert main(["filter", str(CONFIG), f"pool={pool}", f"out={filtered}", "--no-progress"]) == 0
    return filtered


def embedded_pool(tmp_path, data):
    rec = PathRecord(id="q0/cot/0", task="synthetic", question_id="q0", question="?", gold="1", teacher="t",
                     style="cot", sample=0, prompt="p", response="1", embedding=EmbeddingRef("e.npy", 0))
    write_pool(tmp_path / "embedded.jsonl", [rec])
    return tmp_path / "embedded.jsonl"


def data_copy(tmp_path, data):
    return Path(shutil.copy(data, tmp_path / "questions.jsonl"))


def pool_without_log(tmp_path, data):
    assert main(gen_args(data, tmp_path / "pool.jsonl", "limit=1")) == 0
    return Path(shutil.copy(tmp_path / "pool.jsonl", tmp_path / "copied.jsonl"))


@pytest.mark.parametrize("make,seems", [
    (filtered_pool, "a filtered pool (qr-ds filter's output)"),
    (embedded_pool, "an embedded pool (qr-ds embed's output)"),
    (data_copy, "not a path pool (its first line is not a pool record)"),
    (pool_without_log, "a path pool without generate's request log (copied.log.jsonl) beside it"),
])
def test_generate_refuses_a_file_it_did_not_write_and_leaves_it_alone(tmp_path, data, monkeypatch, capsys, make, seems):
    out = make(tmp_path, data)
    before = out.read_bytes()
    capsys.readouterr()
    no_teacher(monkeypatch)
    for plan in (["--plan"], []):
        assert main(gen_args(data, out, *plan)) == 2
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert "\n" not in err and not captured.out
        assert err == (f"qr-ds generate: error: {CONFIG}: config key 'out': {out} is {seems}, not a pool generate "
                       "wrote, and generating would replace it: set another out= or move the file aside")
        assert out.read_bytes() == before
    assert not log_path(out).exists() and not lock_path(out).exists()


def test_an_empty_file_at_out_is_not_refused(tmp_path, data):
    (tmp_path / "pool.jsonl").touch()
    assert main(gen_args(data, tmp_path / "pool.jsonl")) == 0
    assert len(load_pool(tmp_path / "pool.jsonl").records) == N_QUESTIONS * 12


class CutAfter:
    """The scripted teacher, interrupted (as by Ctrl-C) after ``n`` replies."""

    def __init__(self, n: int):
        from qr_ds.teacher.config import TeacherConfig
        from qr_ds.teacher.scripted import ScriptedTeacher

        self.teacher, self.n = ScriptedTeacher(TeacherConfig(backend="scripted")), n
        self.model = self.teacher.model

    def run(self, requests, on_done):
        def counted(req, comp):
            if self.n == 0:
                raise KeyboardInterrupt
            self.n -= 1
            on_done(req, comp)

        self.teacher.run(requests, counted)


def test_generate_still_resumes_its_own_pool_and_log(tmp_path, data, monkeypatch, capsys):
    from qr_ds.config import from_dict
    from qr_ds.teacher.config import GenerateConfig
    from qr_ds.teacher.generate import generate

    out = tmp_path / "pool.jsonl"
    assert main(gen_args(data, out, "limit=1")) == 0  # a finished smaller run: pool and log beside it
    capsys.readouterr()
    assert main(gen_args(data, out, "--plan")) == 0
    assert "36 paths; 12 already done" in capsys.readouterr().out

    cfg = from_dict(GenerateConfig, {"task": "synthetic", "data": str(data), "out": str(out), "samples_per_style": 2,
                                     "teacher": {"backend": "scripted", "sampling": {"seed": 0}}})
    with pytest.raises(KeyboardInterrupt):  # interrupted: the log grows, the pool is the earlier one
        generate(cfg, teacher=CutAfter(5), progress=False)
    assert len(load_pool(out).records) == 12 and log_path(out).read_text().count("\n") == 17

    stats = generate(cfg, progress=False)
    assert (stats.planned, stats.skipped, stats.requests, stats.succeeded) == (36, 17, 19, 36)

    fresh = tmp_path / "fresh" / "pool.jsonl"  # interrupted before any pool was written: only the log
    with pytest.raises(KeyboardInterrupt):
        generate(dataclasses.replace(cfg, out=fresh), teacher=CutAfter(7), progress=False)
    assert not fresh.exists() and log_path(fresh).is_file()
    assert main(gen_args(data, fresh)) == 0
    assert "already done 7, requested 29" in capsys.readouterr().err


class FakeEncoder:
    dim, max_chars, calls = 4, sys.maxsize, 0

    def encode(self, texts, batch_size):
        return np.ones((len(texts), self.dim), np.float32)


def embed_pool(tmp_path) -> Path:
    recs = [PathRecord(id=f"q{i}/cot/0", task="synthetic", question_id=f"q{i}", question="?", gold="1",
                       teacher="t", style="cot", sample=0, prompt="p", response=f"path {i}") for i in range(3)]
    write_pool(tmp_path / "pool.jsonl", recs)
    return tmp_path / "pool.jsonl"


HOLD = ("import sys; from pathlib import Path; from qr_ds.stages import output_lock\n"
        "with output_lock(Path(sys.argv[1])):\n    print('held', flush=True); sys.stdin.read()")


def test_a_second_embed_on_the_same_output_is_refused_before_the_encoder_loads(tmp_path, monkeypatch, capfd):
    pool, out = embed_pool(tmp_path), tmp_path / "emb" / "embedded.jsonl"
    made = []
    monkeypatch.setattr("qr_ds.embed.run.Encoder", lambda *a, **k: made.append(1) or FakeEncoder())
    args = ["embed", str(CONFIG), f"pool={pool}", f"out={out}", "--no-progress"]
    first = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline() == "held\n"
        assert main(args) == 1
    finally:
        first.stdin.close()
    assert first.wait(timeout=60) == 0
    err = capfd.readouterr().err
    assert f"qr-ds embed: failed: another run (pid {first.pid} on {socket.gethostname()}) is writing this output: {lock_path(out)} is held" in err
    assert not made and not out.exists() and not (tmp_path / "emb" / "embedded.npy").exists()

    assert main(args) == 0  # released: the run goes ahead, and lets go of the lock at the end
    assert made == [1] and len(load_pool(out).records) == 3 and not lock_path(out).exists()


def test_a_refused_pool_still_leaves_no_output_folder(tmp_path):
    from qr_ds.config import from_dict
    from qr_ds.embed.config import EmbedConfig
    from qr_ds.embed.run import run_embed

    rec = PathRecord(id="q/cot/0", task="synthetic", question_id="q", question="?", gold="1", teacher="t",
                     style="cot", sample=0, prompt="p", error="timeout")
    write_pool(tmp_path / "pool.jsonl", [rec])
    cfg = from_dict(EmbedConfig, {"pool": str(tmp_path / "pool.jsonl"), "out": str(tmp_path / "new" / "emb.jsonl")})
    with pytest.raises(ValueError, match="nothing to embed"):
        run_embed(cfg, encoder=FakeEncoder(), progress=False)
    assert not (tmp_path / "new").exists()


def test_where_no_lock_can_be_taken_the_run_goes_on_and_says_so(tmp_path, monkeypatch):
    """Lustre mounted noflock answers flock with ENOLCK: refusing every run there would be worse."""
    import errno
    import fcntl

    from qr_ds.stages import output_lock

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    said, ran = [], []
    with output_lock(tmp_path / "out.jsonl", log=said.append):
        ran.append(True)
    assert not (tmp_path / "out.jsonl.lock").exists()
    assert ran == [True] and said == [f"note: no lock on {tmp_path / 'out.jsonl'} (no locks available): two runs on "
                                      "it are not kept apart"]
