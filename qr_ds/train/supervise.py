"""How `qr-ds train` runs the DeepSpeed launcher: in a session of its own, stopped whole when the
wrapper is stopped, and waited out to its last process, so that the output lock the wrapper holds
is let go only when nothing of the job writes the folder any more. A `kill` of the wrapper alone
once left the launcher and its ranks training on an unlocked folder."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# Ctrl-C, Ctrl-\, `kill PID`, a closed terminal. Each reaches the job as SIGTERM: DeepSpeed's runner
# turns SIGTERM (not SIGHUP or SIGQUIT) into its kill on a hostfile's other nodes, and SIGTERM is what
# a rank reports as a stop rather than a crash (a forwarded SIGINT printed a traceback per rank).
STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
PR_SET_CHILD_SUBREAPER = 36


def run_launcher(cmd: list[str], env: dict, stop_marker: Path, grace_s: float = 60.0) -> int:
    """The launcher's exit status (a shell's 128 + N when a signal N ended it or stopped the job).
    ``stop_marker`` is written before a stop is passed on, so the ranks say "stopped", not "failed".
    A signal the wrapper inherited as ignored (SIGHUP under nohup) stays ignored. A SIGKILL of the
    wrapper alone cannot be caught: its job then runs on unlocked."""
    _become_subreaper()
    stop_marker.unlink(missing_ok=True)  # a wrapper killed before its cleanup left one
    child: subprocess.Popen | None = None
    got: list[int] = []

    def forward(signum, frame):
        if not got:
            stop_marker.parent.mkdir(parents=True, exist_ok=True)
            stop_marker.write_text(f"`qr-ds train` was stopped ({signal.Signals(signum).name})\n")
        got.append(signum)
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)

    # before the launcher starts: a stop in between would end the wrapper and leave the job running
    before = {s: signal.signal(s, forward) for s in STOPPING if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        child = subprocess.Popen(cmd, env=env, start_new_session=True)
        if got:
            forward(got[0], None)
        code = child.wait()
        wait_out(child.pid, got, grace_s, finished=code == 0)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        stop_marker.unlink(missing_ok=True)
    if got and got[0] == signal.SIGINT:
        raise KeyboardInterrupt  # the CLI says what Ctrl-C leaves and how to go on
    if got and code != 0:
        return 128 + got[0]
    return 128 - code if code < 0 else code  # Popen's -N for a launcher ended by signal N


def wait_out(pgid: int, stopped: list[int], grace_s: float, finished: bool) -> None:
    """Reap every process left in the launcher's group: as their subreaper the wrapper inherits what
    the launcher leaves behind (ranks training on under a launcher whose runner was OOM-killed), and
    the output stays locked until they are gone. After a stop, what still runs after ``grace_s`` is
    killed; after a launcher that ``finished`` well, it is left (a helper process, not training)."""
    deadline = time.monotonic() + grace_s
    said = False
    while True:
        try:
            pid, _ = os.waitpid(-pgid, os.WNOHANG)
        except ChildProcessError:  # no process of the group is left (or, without a subreaper, none of ours)
            return
        if pid:
            continue
        late = time.monotonic() > deadline
        if stopped and late:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        elif finished and late:
            print(f"qr-ds train: the launcher finished; processes it started still run in group {pgid}, "
                  "left running", file=sys.stderr, flush=True)
            return
        elif not stopped and not finished and not said:
            print("qr-ds train: the launcher exited while processes it started still run; waiting for them "
                  "(the output stays locked)", file=sys.stderr, flush=True)
            said = True
        time.sleep(0.2)


def _become_subreaper() -> None:
    """Linux: orphans of the launcher's group become the wrapper's children, so it can wait for them."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)
