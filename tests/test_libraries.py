"""Library calls that replaced code of our own give what ours gave: the exact McNemar p, the
prepared-data lock between processes, process states and free memory, and metrics rows with U+2028."""
import json
import os
import signal
import subprocess
import sys
from fractions import Fraction
from math import comb

import psutil
import pytest


def exact_mcnemar(only_a: int, only_b: int) -> Fraction:
    """The replaced code, in exact rationals: twice the smaller binomial(n, 1/2) tail, at most 1."""
    n = only_a + only_b
    if n == 0:
        return Fraction(1)
    return min(Fraction(1), 2 * Fraction(sum(comb(n, k) for k in range(min(only_a, only_b) + 1)), 2 ** n))


def test_mcnemar_through_scipy_equals_the_exact_sum():
    from qr_ds.report.stats import mcnemar_exact

    worst = 0.0
    for n in range(0, 121):
        for a in range(n + 1):
            want = exact_mcnemar(a, n - a)
            worst = max(worst, abs(mcnemar_exact(a, n - a) - want) / want)
    assert worst < 1e-12  # measured 2.7e-14 up to n = 300
    # far tails stay relative, not absolute: 2 * 2^-200 is not rounded to 0
    assert mcnemar_exact(0, 200) == pytest.approx(float(exact_mcnemar(0, 200)), rel=1e-12)


HOLD = """
import sys, time
from pathlib import Path
from qr_ds.train.prepared import _file_lock
lock, go = Path(sys.argv[1]), Path(sys.argv[2])
with _file_lock(lock, lambda: None):
    print("held", flush=True)
    while not go.exists():
        time.sleep(0.01)
"""


def test_prepared_data_lock_makes_a_second_process_wait(tmp_path):
    """A second builder is told it waits, and gets the lock only once the first process lets go."""
    from qr_ds.train.prepared import _file_lock

    lock, go = tmp_path / "k.lock", tmp_path / "go"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), str(go)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        waited = []

        def on_wait():
            waited.append(holder.poll())
            go.touch()  # only now may the holder release

        with _file_lock(lock, on_wait):
            assert waited == [None]  # told to wait while the holder was alive and holding
            assert holder.wait(timeout=60) == 0  # and the lock came after it let go
        with _file_lock(lock, lambda: waited.append("again")):
            assert len(waited) == 1  # released on exit: no wait the second time
    finally:
        holder.kill()
        holder.wait()


def _proc_letter(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:  # the replaced reader
        return fh.read().rsplit(")", 1)[1].split()[0]


def test_process_states_through_psutil_match_proc(tmp_path, monkeypatch):
    from qr_ds.distributed.health import _status, dead_ranks, launch_id, stopped_ranks, write_pid_file

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    quitter = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.kill(sleeper.pid, signal.SIGSTOP)
        while _proc_letter(sleeper.pid) != "T":
            pass
        os.waitid(os.P_PID, quitter.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
        assert (_proc_letter(sleeper.pid), _status(sleeper.pid)) == ("T", psutil.STATUS_STOPPED)
        assert (_proc_letter(quitter.pid), _status(quitter.pid)) == ("Z", psutil.STATUS_ZOMBIE)
        assert _status(os.getpid()) == psutil.STATUS_RUNNING and _proc_letter(os.getpid()) == "R"
        monkeypatch.setenv("MASTER_PORT", "4444")
        for rank, pid in ((1, sleeper.pid), (2, quitter.pid)):
            (tmp_path / f"rank{rank}.pid").write_text(f"{pid} {launch_id()}")
        write_pid_file(tmp_path, 0)
        assert stopped_ranks(tmp_path) == [(1, sleeper.pid)] and dead_ranks(tmp_path) == [(2, quitter.pid)]
    finally:
        sleeper.kill()
        sleeper.wait()
        quitter.wait()
    assert _status(quitter.pid) is None  # reaped: gone


def _meminfo_kib(key: str) -> int:
    with open("/proc/meminfo") as fh:  # the replaced reader
        return next(int(line.split()[1]) for line in fh if line.startswith(key + ":"))


def test_free_memory_through_psutil_matches_proc_meminfo():
    before = _meminfo_kib("MemAvailable")
    memory = psutil.virtual_memory()
    after = _meminfo_kib("MemAvailable")
    assert memory.total == _meminfo_kib("MemTotal") * 1024
    slack = 64 * 2**20  # what other processes on the machine allocate between the reads
    assert min(before, after) * 1024 - slack <= memory.available <= max(before, after) * 1024 + slack


def test_metrics_truncation_keeps_rows_holding_line_separators(tmp_path):
    from qr_ds.train.metrics import truncate_jsonl

    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "note": "a\u2028b"}, {"step": 2, "note": "c\u2029d\x85e"}, {"step": 3}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    truncate_jsonl(path, after_step=2)
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line] == rows[:2]
