"""DeepSpeed's CPU backend JIT-builds its shared-memory all-reduce op on every launch, under
torch's build lock ``<torch_extensions>/<py>_cpu/deepspeed_shm_comm/lock``. A launch killed
mid-build leaves the lock behind and every later launch waits on it forever, printing nothing.
Before DeepSpeed starts we look: a live build keeps writing into its folder, a stale lock does not."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

OP = "deepspeed_shm_comm"


def build_lock() -> Path:
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(OP, verbose=False)) / "lock"


def _last_write(folder: Path) -> float:
    return max((p.stat().st_mtime for p in folder.rglob("*") if p.exists()), default=0.0)


def check_shm_build_lock(stale_after_s: float = 300.0, poll_s: float = 1.0) -> None:
    """Return once no build lock is held; say so while waiting on a live build; raise, naming the
    lock and the command that clears it, when nothing has written to the build folder for
    ``stale_after_s`` (a build of this op takes well under that)."""
    if os.environ.get("DS_ACCELERATOR", "cpu") != "cpu":
        return
    lock = build_lock()
    said = False
    while lock.exists():
        idle = time.time() - _last_write(lock.parent)
        if idle > stale_after_s:
            raise RuntimeError(f"stale build lock {lock}: nothing has written to {lock.parent} for {idle:.0f} s, "
                               f"so an earlier launch died while DeepSpeed built its CPU shm op and every launch "
                               f"would wait on it forever. Clear it: rm {lock}")
        if not said:
            print(f"[qr_ds] waiting for DeepSpeed's shm op build ({lock} is held, last write {idle:.0f} s ago); "
                  f"if no launch is building it, clear it: rm {lock}", file=sys.stderr, flush=True)
            said = True
        time.sleep(poll_s)
