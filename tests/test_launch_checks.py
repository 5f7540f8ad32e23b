"""The torchrun path (what srun starts on SLURM) runs `qr-ds train`'s checks on rank 0 before the first
collective and a refusal ends every rank; `--resume auto` starts a first run and resumes a requeued one."""
import contextlib
import json

import pytest
import yaml

from qr_ds.testing import builders as trainkit

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    d = tmp_path_factory.mktemp("checks")
    pool = trainkit.make_pool(d / "pool")
    return d, pool, trainkit.make_students(d / "students", pool)


def test_a_refusal_on_rank_0_ends_every_rank_naming_the_key(kit):
    d, pool, studs = kit
    run = d / "held"
    (run / "checkpoints" / "step_000002").mkdir(parents=True)
    (run / "checkpoints" / "step_000002" / "meta.json").write_text('{"step": 2, "students": []}')
    (run / "checkpoints" / "latest").write_text("step_000002")
    cfg = trainkit.write_config(d / "held.yaml", studs, pool, run, ranks=["auto", "auto"])
    res = trainkit.launch(cfg, 2, launcher="torchrun", timeout=300)
    assert res.returncode != 0
    assert f"[qr_ds] preflight: config key 'output_dir': {run} already holds a training run" in res.stderr, res.stderr[-3000:]
    assert "[qr_ds] rank 1 refused: rank 0's checks refused the run (1 problem(s)" in res.stderr, res.stderr[-3000:]
    assert "qr_ds/train/" not in res.stderr  # no rank's traceback (torchrun prints its own)
    assert not (run / "metrics.jsonl").exists()


def test_resume_auto_starts_a_first_run_and_resumes_a_requeued_one(kit):
    d, pool, studs = kit
    run = d / "auto"
    first = trainkit.write_config(d / "auto.yaml", studs, pool, run, ranks=["auto", "auto"], max_steps=2, save_every=2)
    res = trainkit.launch(first, 2, "--resume", "auto", launcher="torchrun", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    again = trainkit.write_config(d / "auto.yaml", studs, pool, run, ranks=["auto", "auto"], max_steps=4, save_every=2)
    res = trainkit.launch(again, 2, "--resume", "auto", launcher="torchrun", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stdout + res.stderr
    assert "kernels-community" not in res.stderr  # bitsandbytes' harmless CPU warning, once on every rank
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    # the longer run's config.yaml is today's; the one it started with is kept, named by the resume step
    assert yaml.safe_load((run / "config.yaml").read_text())["max_steps"] == 4
    assert yaml.safe_load((run / "config.before_step_000002.yaml").read_text())["max_steps"] == 2
    assert "the run's earlier config.yaml is kept as config.before_step_000002.yaml" in res.stdout + res.stderr


def test_a_second_job_into_a_folder_a_live_job_trains_is_refused(kit):
    """Both would pass every check (nothing is written yet) and then write one folder."""
    import os
    import socket
    import subprocess
    import sys

    from qr_ds.stages import lock_path, output_lock

    d, pool, studs = kit
    run = d / "busy"
    cfg = trainkit.write_config(d / "busy.yaml", studs, pool, run, ranks=["auto", "auto"])
    held = f"another run (pid {os.getpid()} on {socket.gethostname()}) is writing this output: {lock_path(run)} is held"
    with output_lock(run):  # the first job, as `qr-ds train` or a direct launch's rank 0 holds it
        res = trainkit.launch(cfg, 2, launcher="torchrun", timeout=300)
        assert res.returncode != 0 and f"[qr_ds] preflight: config key 'output_dir': {held}" in res.stderr, res.stderr[-3000:]
        res = subprocess.run([sys.executable, "-m", "qr_ds", "train", "--config", str(cfg), "--num-procs", "2"],
                             capture_output=True, text=True, timeout=300, env={**os.environ, "DS_ACCELERATOR": "cpu"})
        assert res.returncode == 1 and held in res.stderr and "deepspeed.launcher" not in res.stderr, res.stderr
        assert lock_path(run).read_text().split() == [str(os.getpid()), socket.gethostname()]  # not taken over
    assert not (run / "metrics.jsonl").exists() and not lock_path(run).exists()


def test_stopping_the_train_wrapper_stops_its_ranks_before_it_lets_the_output_go(kit):
    """`kill PID` of `qr-ds train` alone once left the launcher and the ranks training, lock released."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from qr_ds.run_layout import RunDir
    from qr_ds.stages import lock_path

    d, pool, studs = kit
    run = d / "stopped"
    cfg = trainkit.write_config(d / "stopped.yaml", studs, pool, run, ranks=["auto", "auto"], max_steps=100000)
    log = d / "stopped.log"  # a file, not a pipe: an undrained pipe would stall the ranks' output
    with log.open("w") as sink:
        wrapper = subprocess.Popen([sys.executable, "-m", "qr_ds", "train", "--config", str(cfg), "--num-procs", "2"],
                                   stdout=subprocess.DEVNULL, stderr=sink,
                                   env={**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"})
    metrics, deadline = RunDir(run).metrics, time.monotonic() + 240
    while not (metrics.is_file() and metrics.read_text().strip()) and wrapper.poll() is None:
        assert time.monotonic() < deadline, "no training step logged in 240 s"
        time.sleep(0.5)
    assert wrapper.poll() is None, log.read_text()[-3000:]
    ranks = [int(f.read_text().split()[0]) for f in sorted(RunDir(run).ranks.glob("rank*.pid"))]
    assert len(ranks) == 2 and lock_path(run).read_text().split()[0] == str(wrapper.pid)
    wrapper.send_signal(signal.SIGTERM)
    try:
        assert wrapper.wait(timeout=120) == 128 + signal.SIGTERM
        assert not [p for p in ranks if running(p)] and not lock_path(run).exists()
        err = log.read_text()
        assert "[qr_ds] rank 0 stopped: `qr-ds train` was stopped (SIGTERM)" in err, err[-3000:]
        assert "failed" not in err, err[-3000:]  # a stop, not a crash, on every rank
    finally:  # a failure here must not leave ranks training beside the rest of the suite
        for pid in ranks:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()


def running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
