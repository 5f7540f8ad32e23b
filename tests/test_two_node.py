"""Two nodes on loopback: two torchrun launchers with a c10d rendezvous on 127.0.0.1, one student per
node, so the mutual exchange and every collective cross the node boundary (gloo over TCP). The run
folder is shared, as on a cluster's shared filesystem. Losses match a one-node run of the same
layout, a dead node ends the other naming its rank, and one node resumes the two-node checkpoint."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from qr_ds.testing import builders as trainkit

pytestmark = pytest.mark.slow
ROOT = trainkit.ROOT
KEYS = ("sft_loss/llama", "sft_loss/gemma", "mutual_loss", "router_loss")


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    d = tmp_path_factory.mktemp("nodes")
    pool = trainkit.make_pool(d / "pool")
    return d, pool, trainkit.make_students(d / "students", pool)


def _config(kit, name, **over):
    d, pool, studs = kit
    over = {"max_steps": 4, "save_every": 2, "keep_last": 3, **over}
    return trainkit.write_config(d / f"{name}.yaml", studs, pool, d / name, **over)


def _node(config, node_rank: int, port: int, log_dir, *extra):
    """One node's launcher, as docs/clusters.md starts it on a cluster (there, each on its own host;
    here both on one, so the first is told to host the rendezvous store)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node_rank),
           "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
           "--rdzv_conf", f"is_host={int(node_rank == 0)}",
           str(ROOT / "launch/train.py"), "--config", str(config), *extra]
    out = open(log_dir / f"node{node_rank}.out", "w")
    err = open(log_dir / f"node{node_rank}.err", "w")
    # The files, not pipes: a launcher blocked on a full pipe would stall its node's collectives.
    return subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True, cwd=ROOT)


def _two_nodes(config, log_dir, *extra, wait=True):
    port = trainkit._free_port()
    node0 = _node(config, 0, port, log_dir, *extra)
    time.sleep(1)  # node 0 hosts the store; node 1 retries its connection meanwhile anyway
    node1 = _node(config, 1, port, log_dir, *extra)
    if not wait:
        return node0, node1
    for p in (node0, node1):
        p.wait(timeout=400)
    errs = [(log_dir / f"node{r}.err").read_text() for r in (0, 1)]
    assert node0.returncode == 0 and node1.returncode == 0, errs[0][-4000:] + errs[1][-4000:]
    return errs


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# The gain signal is a student's loss change over a step, a difference of two nearly equal losses:
# the rounding of a different reduce order (one node against two) comes out of it many times larger
# (1.6% of the router loss at step 3 here), while every loss that trains a student agrees to 1e-4.
REL = {"router_loss": 5e-2}


def _close(a: dict, b: dict):
    for k in KEYS:
        assert a[k] == pytest.approx(b[k], rel=REL.get(k, 1e-4), abs=1e-6), (k, a, b)


def test_two_nodes_match_one_node_and_one_node_resumes_their_checkpoint(kit, tmp_path):
    d = kit[0]
    one = _config(kit, "one")
    res = trainkit.launch(one, 2, launcher="torchrun", timeout=400)
    assert res.returncode == 0, res.stderr[-4000:]

    two = _config(kit, "two")
    _two_nodes(two, tmp_path)
    rows1, rows2 = _metrics(d / "one"), _metrics(d / "two")
    assert [r["step"] for r in rows2] == [1, 2, 3, 4]
    for a, b in zip(rows1, rows2):
        _close(a, b)
    assert all(r["mutual_loss"] > 0 for r in rows2)  # the exchange crossed the node boundary
    # Node 1 shared node 0's prepared data: one folder for the run.
    assert len(list((d / "two" / "prepared").glob("*/meta.json"))) == 1

    # One node picks up the two-node checkpoint at step 2 and finishes as the two nodes did.
    resumed = d / "resumed"
    shutil.copytree(d / "two", resumed)
    (resumed / "checkpoints/latest").write_text("step_000002")
    shutil.rmtree(resumed / "checkpoints/step_000004")
    (resumed / "metrics.jsonl").unlink()
    res = trainkit.launch(_config(kit, "resumed"), 2, "--resume", launcher="torchrun", timeout=400)
    assert res.returncode == 0, res.stderr[-4000:]
    rows_r = _metrics(resumed)
    assert [r["step"] for r in rows_r] == [3, 4]
    for a, b in zip(rows_r, rows2[2:]):
        _close(a, b)
    assert "prepared training data reused" in res.stdout + res.stderr


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])


@pytest.mark.parametrize("killed", ["launcher", "node"])
def test_a_dead_node_ends_the_other_naming_its_rank(kit, tmp_path, killed):
    """``launcher``: only node 1's torchrun dies (its rank must not train on as an orphan);
    ``node``: its launcher and its rank both."""
    d = kit[0]
    run = d / f"kill_{killed}"
    # epochs: 24 steps an epoch finish in seconds on an idle machine, before the kill
    # a collective timeout well above the bound: ending by timeout would fail the test, not pass it
    config = _config(kit, f"kill_{killed}", max_steps=500, epochs=100, collective_timeout_s=300)
    node0, node1 = _two_nodes(config, tmp_path, wait=False)
    try:
        pid_file = run / "ranks" / "rank1.pid"
        deadline = time.time() + 300
        while time.time() < deadline and not ((run / "metrics.jsonl").is_file() and pid_file.is_file()):
            assert node0.poll() is None and node1.poll() is None, (tmp_path / "node0.err").read_text()[-3000:]
            time.sleep(0.5)
        assert pid_file.is_file(), "training never started"
        worker = int(pid_file.read_text().split()[0])
        launcher = _parent(worker)  # the rendezvous decides which launcher holds rank 1
        assert launcher in (node0.pid, node1.pid)
        survivor = node0 if launcher == node1.pid else node1
        t0 = time.time()
        os.kill(launcher, signal.SIGKILL)
        if killed == "node":
            os.kill(worker, signal.SIGKILL)
        survivor.wait(timeout=120)
        took = time.time() - t0
    finally:
        for p in (node0, node1):
            if p.poll() is None:
                p.kill()
        if os.path.exists(f"/proc/{worker}"):  # an orphaned rank, when the test fails
            os.kill(worker, signal.SIGKILL)
    err = (tmp_path / f"node{0 if survivor is node0 else 1}.err").read_text()
    assert survivor.returncode != 0
    assert took < 60, f"the surviving node took {took:.0f} s to end"
    assert f"[qr_ds] rank 1 (pid {worker}) is gone" in err, err[-3000:]


def test_a_pid_of_another_node_is_never_judged_by_this_nodes_proc(tmp_path, monkeypatch, capsys):
    """On a shared filesystem rank 1's pid file names a pid of its own host: this host's /proc says
    nothing about it (here the pid is gone on this host), so it is listed as on another node, never
    called dead; a rank of this host whose pid is gone is."""
    from qr_ds.distributed import health
    from qr_ds.train.launch import report_lost_ranks

    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    health.write_pid_file(tmp_path, 0)
    (tmp_path / "rank1.pid").write_text(f"{gone} {health.launch_id()} other-node")
    assert health.dead_ranks(tmp_path) == [] and health.other_hosts(tmp_path) == [(1, int(gone), "other-node")]
    before = signal.getsignal(signal.SIGTERM)
    report_lost_ranks(tmp_path, wait_s=0.2)  # it ignores SIGTERM (a dying rank's last words)
    signal.signal(signal.SIGTERM, before)
    err = capsys.readouterr().err
    assert "is gone" not in err and f"ranks on other nodes: 1 on other-node (pid {gone})" in err
    (tmp_path / "rank1.pid").write_text(f"{gone} {health.launch_id()}")  # no host: an older file, this host
    assert health.dead_ranks(tmp_path) == [(1, int(gone))]
