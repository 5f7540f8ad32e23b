"""Which rank died: each rank leaves its pid in the run folder, so a survivor whose collective
failed can name the rank that is gone (ranks on the same node).

A pid file carries the launch it belongs to (the rendezvous address, new for every launch), so a
file left by an earlier run in the same folder never names a rank of this one, and its host: on a
shared filesystem a pid of another node means nothing in this node's /proc.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import psutil

GONE = (None, psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
FROZEN = (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)  # SIGSTOP, or a debugger's stop


def launch_id() -> str:
    return f"{os.environ.get('MASTER_ADDR', '')}:{os.environ.get('MASTER_PORT', '')}"


def write_pid_file(folder: Path, rank: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".rank{rank}.pid.tmp"
    tmp.write_text(f"{os.getpid()} {launch_id()} {socket.gethostname()}")
    os.replace(tmp, folder / f"rank{rank}.pid")


def _status(pid: int) -> str | None:
    """psutil's status (running, sleeping, stopped, zombie...), or None when the process is gone."""
    try:
        return psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:  # /proc mounted with hidepid: the process exists, its state is hidden
        return "unknown"


def _all_ranks(folder: Path) -> list[tuple[int, int, str]]:
    """(rank, pid, host) of this launch's pid files."""
    out = []
    for f in sorted(folder.glob("rank*.pid")):
        fields = f.read_text().split(" ")
        if len(fields) < 2:  # written by an older launch: not ours
            continue
        pid, owner, *host = fields
        if owner == launch_id():
            out.append((int(f.stem[4:]), int(pid), host[0] if host else socket.gethostname()))
    return out


def _ranks(folder: Path) -> list[tuple[int, int]]:
    """(rank, pid) of this launch's ranks on this host: the only pids this host can look up."""
    here = socket.gethostname()
    return [(r, pid) for r, pid, host in _all_ranks(folder) if host == here]


def other_hosts(folder: Path) -> list[tuple[int, int, str]]:
    """(rank, pid, host) of this launch's ranks on other nodes (their pid files on a shared filesystem)."""
    here = socket.gethostname()
    return [(r, pid, host) for r, pid, host in _all_ranks(folder) if host != here]


def dead_ranks(folder: Path) -> list[tuple[int, int]]:
    # A killed rank stays a zombie until the launcher reaps it; kill(pid, 0) still succeeds then.
    return [(r, pid) for r, pid in _ranks(folder) if _status(pid) in GONE]


def stopped_ranks(folder: Path) -> list[tuple[int, int]]:
    """Ranks frozen by a signal (SIGSTOP, a debugger): alive, yet every collective waits on them."""
    return [(r, pid) for r, pid in _ranks(folder) if _status(pid) in FROZEN]
