"""How `qr-ds train` runs the launcher (qr_ds/train/supervise.py), on plain child processes. Each case
runs the wrapper's side in a process of its own: it becomes a subreaper and takes over signals."""
import signal
import subprocess
import sys
import textwrap
import time

WRAPPER = """
import signal, sys
from pathlib import Path
from qr_ds.train.supervise import STOPPING, run_launcher
for s in STOPPING:  # as a terminal gives them; a shell's background job inherits SIGINT and SIGQUIT ignored
    signal.signal(s, signal.SIG_DFL)
{before}
code = run_launcher([sys.executable, "-c", {child!r}], {{}}, Path({marker!r}))
print("returned", code, flush=True)
"""


def wrapper(tmp_path, child: str, before: str = "") -> subprocess.Popen:
    script = WRAPPER.format(before=before, child=textwrap.dedent(child), marker=str(tmp_path / "ranks" / "stopped"))
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_what_the_launcher_leaves_running_is_waited_for_before_the_wrapper_returns(tmp_path):
    """A launcher whose runner dies leaves its ranks training: the lock must stay until they are done."""
    done = tmp_path / "done"
    proc = wrapper(tmp_path, f"""
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2); open({str(done)!r}, 'w').write('x')"])
        sys.exit(1)  # as a runner the OOM killer took: its launcher and ranks train on
    """)
    out, err = proc.communicate(timeout=60)
    assert out.strip() == "returned 1" and done.is_file(), err  # returned only after the orphan finished
    assert "the launcher exited while processes it started still run; waiting for them" in err


def test_a_signal_ignored_under_nohup_stays_ignored_and_the_launchers_status_is_returned(tmp_path):
    """Under nohup a forwarded SIGHUP did nothing to the job, yet the wrapper returned 129 for a finished run."""
    proc = wrapper(tmp_path, "import time; time.sleep(3)", before="signal.signal(signal.SIGHUP, signal.SIG_IGN)")
    time.sleep(1.5)
    proc.send_signal(signal.SIGHUP)
    out, err = proc.communicate(timeout=60)
    assert out.strip() == "returned 0", err
    assert not (tmp_path / "ranks" / "stopped").exists()


def test_a_stop_reaches_the_whole_group_as_sigterm_and_is_marked_for_the_ranks(tmp_path):
    seen = tmp_path / "seen"
    proc = wrapper(tmp_path, f"""
        import os, signal, sys, time
        from pathlib import Path
        def stop(signum, frame):
            marker = Path({str(tmp_path / "ranks" / "stopped")!r}).read_text().strip()
            Path({str(seen)!r}).write_text(f"{{signal.Signals(signum).name}}: {{marker}}")
            sys.exit(1)
        signal.signal(signal.SIGTERM, stop)
        time.sleep(60)
    """)
    time.sleep(1.5)
    proc.send_signal(signal.SIGQUIT)  # Ctrl-\\ killed the wrapper alone
    out, err = proc.communicate(timeout=60)
    assert out.strip() == f"returned {128 + signal.SIGQUIT}", err
    assert seen.read_text() == "SIGTERM: `qr-ds train` was stopped (SIGQUIT)"
    assert not (tmp_path / "ranks" / "stopped").exists()  # gone with the job
