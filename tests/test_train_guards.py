"""Guards around a training run that need no launch (issue 15): plain student names, report_to
backends that exist, pid files of this launch only, a stopped rank named, a stale JIT-build lock
named, a durable 'latest', RNG states that load without unpickling, /dev/shm released on refusal."""
import glob
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from qr_ds.testing import builders as trainkit
from qr_ds.config import ConfigError, load_config
from qr_ds.train.config import TrainConfig


def _cfg(tmp_path, **over):
    students = [tmp_path / "a-x", tmp_path / "b-x"]
    return trainkit.write_config(tmp_path / "c.yaml", students, tmp_path / "pool.jsonl", tmp_path / "run", **over)


def test_student_name_must_be_plain(tmp_path):
    with pytest.raises(ConfigError, match=r"students\[0\]\.name.*not a plain name"):
        load_config(TrainConfig, _cfg(tmp_path), {"students.0.name": "../../../../escape"})


def test_report_to_backend_not_installed_is_refused_naming_pip(tmp_path, monkeypatch):
    import qr_ds.train.config as config

    monkeypatch.setattr(config, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"'report_to': wandb .*pip install wandb"):
        load_config(TrainConfig, _cfg(tmp_path, report_to=["jsonl", "wandb"]))


def test_dead_ranks_of_this_launch_are_named_and_of_an_earlier_one_are_not(tmp_path, monkeypatch):
    from qr_ds.distributed.health import dead_ranks, launch_id, write_pid_file

    monkeypatch.setenv("MASTER_PORT", "1111")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # exited and reaped: no /proc entry
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie, as a killed rank is
    try:
        (tmp_path / "rank1.pid").write_text(f"{gone.pid} {launch_id()} {socket.gethostname()}")
        (tmp_path / "rank4.pid").write_text(f"{zombie.pid} {launch_id()} {socket.gethostname()}")
        (tmp_path / "rank2.pid").write_text(f"{gone.pid} :2222")  # a dead rank of another launch
        (tmp_path / "rank3.pid").write_text(f"{gone.pid}")  # the old format: no launch at all
        write_pid_file(tmp_path, 0)  # this process: alive
        assert dead_ranks(tmp_path) == [(1, gone.pid), (4, zombie.pid)]
    finally:
        zombie.wait()


def test_stopped_rank_is_named(tmp_path, monkeypatch, capsys):
    from qr_ds.distributed.health import launch_id, write_pid_file
    from qr_ds.train.launch import report_lost_ranks

    monkeypatch.setenv("MASTER_PORT", "3333")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.kill(proc.pid, signal.SIGSTOP)
        stat = Path(f"/proc/{proc.pid}/stat")
        deadline = time.monotonic() + 60  # the stop lands when the process is next scheduled
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "T" and time.monotonic() < deadline:
            time.sleep(0.01)
        (tmp_path / "rank1.pid").write_text(f"{proc.pid} {launch_id()}")  # whatever MASTER_ADDR an earlier test left
        write_pid_file(tmp_path, 0)
        old = signal.getsignal(signal.SIGTERM)
        report_lost_ranks(tmp_path, wait_s=0.2)
        signal.signal(signal.SIGTERM, old)
    finally:
        proc.kill()
        proc.wait()
    assert f"rank 1 (pid {proc.pid}) is stopped" in capsys.readouterr().err


def test_stale_shm_build_lock_is_named_with_the_command(tmp_path, monkeypatch):
    from qr_ds.distributed.shm_lock import build_lock, check_shm_build_lock

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    lock = build_lock()
    lock.write_text("")
    old = time.time() - 3600
    for p in lock.parent.rglob("*"):
        os.utime(p, (old, old))
    with pytest.raises(RuntimeError, match=f"rm {lock}"):
        check_shm_build_lock(stale_after_s=300)
    lock.unlink()
    check_shm_build_lock()  # no lock: returns at once


def test_latest_is_fsynced_before_and_after_rename(tmp_path, monkeypatch):
    from qr_ds.run_layout import RunDir

    run = RunDir(tmp_path)
    run.checkpoints.mkdir()
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    run.set_latest(run.checkpoint(7))
    assert run.latest().step == 7 and len(synced) == 2  # the file, then the folder
    assert not (run.checkpoints / "latest.tmp").exists()


def test_rng_state_loads_weights_only(tmp_path):
    import random

    import numpy as np

    from qr_ds.train.checkpoint import rng_state, set_rng_state

    torch.save(rng_state(), tmp_path / "rng.pt")
    expect = (torch.rand(3), random.random(), np.random.rand())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expect[0], got[0]) and expect[1:] == got[1:]


def test_world_that_does_not_fit_releases_shm(tmp_path):
    """Students 2+2 on a world of 1: refused, and DeepSpeed's 66 MiB /dev/shm file is gone."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("from qr_ds.distributed.strategy import Strategy\n"
            "from qr_ds.distributed.topology import make_layout\n"
            "Strategy(lambda ws: make_layout([2, 2], ws, 'separate'), backend='gloo', timeout_s=30)\n")
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1",
               LOCAL_RANK="0", DS_ACCELERATOR="cpu")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "needs one process per student rank" in res.stderr
    assert glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_{port}_*") == []


# ---- issue 23: names read from a run's files stay in the run ----

def test_checkpoint_names_from_files_stay_in_the_run(tmp_path, monkeypatch):
    from qr_ds.run_layout import CheckpointDir, RunDir

    run = RunDir(tmp_path / "run")
    ckpt = run.checkpoint(1)
    ckpt.path.mkdir(parents=True)
    ckpt.meta.write_text('{"step": 1, "students": [{"name": "../..", "model": "m"}]}')
    with pytest.raises(ValueError, match=r"meta.json: student name '\.\./\.\.' is not a plain folder name"):
        ckpt.read_meta()
    ckpt.meta.write_text('{"step": 1, "students": [{"name": "a", "mo')
    with pytest.raises(ValueError, match=r"meta.json:1: not valid JSON .*cut short"):
        ckpt.read_meta()
    ckpt.meta.write_text('[1, 2]')
    with pytest.raises(ValueError, match=r"meta.json: not a checkpoint's meta.json"):
        ckpt.read_meta()
    (run.checkpoints / "latest").write_text("../../outside/step_9")
    with pytest.raises(ValueError, match=r"latest: names '../../outside/step_9', not a step_NNNNNN folder"):
        run.latest()
    monkeypatch.chdir(run.checkpoints)  # `--checkpoint step_000001` from inside checkpoints/
    assert CheckpointDir(Path("step_000001")).run.root == run.root


def test_overwrite_moves_the_old_run_aside(tmp_path, capsys, monkeypatch):
    from qr_ds.stages import set_aside

    monkeypatch.setattr("qr_ds.stages.time.strftime", lambda fmt: "20261206-120000")  # one second for both

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    set_aside(run, "train", "run")
    (aside,) = tmp_path.glob("run.replaced-*")
    assert not run.exists() and (aside / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert f"moved the previous run {run} to {aside}" in capsys.readouterr().err
    (run / "checkpoints").mkdir(parents=True)
    set_aside(run, "train", "run")  # within the same second: a second name, not a failed rename
    assert sorted(p.name for p in tmp_path.glob("run.replaced-*")) == ["run.replaced-20261206-120000",
                                                                       "run.replaced-20261206-120000-2"]
    assert not run.exists()


class _Planted:  # a pickle that would run code when loaded
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("content", ["malicious", "empty"])
def test_a_state_file_that_is_not_weights_only_is_one_line_naming_it(tmp_path, content):
    import pickle

    from qr_ds.train.checkpoint import load_state

    path, marker = tmp_path / "router.pt", tmp_path / "ran"
    path.write_bytes(pickle.dumps({"w": _Planted(str(marker))}) if content == "malicious" else b"")
    with pytest.raises(ValueError) as e:
        load_state(path)
    assert str(e.value).startswith(f"{path}: refused: not a weights-only state file (") and "\n" not in str(e.value)
    assert not marker.exists()  # nothing ran
