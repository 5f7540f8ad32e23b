"""Which rank died: each rank leaves its pid in the run folder, so a survivor whose collective
failed can name the rank that is gone (ranks on the same node)."""
from __future__ import annotations

import os
from pathlib import Path


def write_pid_file(out_dir: Path, rank: int) -> None:
    d = out_dir / "ranks"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"rank{rank}.pid").write_text(str(os.getpid()))


def _alive(pid: int) -> bool:
    try:
        # A killed rank stays a zombie until the launcher reaps it; kill(pid, 0) still succeeds then.
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False


def dead_ranks(out_dir: Path) -> list[tuple[int, int]]:
    return [(int(f.stem[4:]), int(f.read_text())) for f in sorted((out_dir / "ranks").glob("rank*.pid"))
            if not _alive(int(f.read_text()))]
