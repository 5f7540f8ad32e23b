"""Evaluate checkpoints while training goes on: each in its own ``python -m qr_ds eval`` process.

``submit`` only starts a process (or queues the request) and returns. At most ``max_in_flight``
evaluations run at once; a submission that finds them all busy waits, and a waiting one that a
newer submission supersedes is skipped (logged): the newest checkpoint is the one worth scoring.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from qr_ds.run_layout import step_name
from qr_ds.stages import set_aside
from qr_ds.train.config import EvalDuringTraining


@dataclass
class _Job:
    step: int
    checkpoint: Path
    out: Path
    proc: subprocess.Popen | None = None
    started: float = 0.0


class BackgroundEvaluator:
    def __init__(self, cfg: EvalDuringTraining, out_dir: Path, log: Callable[[str], None] | None = None,
                 extra_args: list[str] | None = None):
        if not cfg.tasks:
            raise ValueError("eval during training: 'tasks' is empty (task name -> dev file)")
        # Absolute now: each process runs inside its own output folder, where a path relative to the
        # trainer's working directory (a relative output_dir) names nothing.
        self.cfg, self.out_dir = cfg, Path(out_dir).resolve()
        self.log = log or (lambda m: print(m, file=sys.stderr))
        self.extra_args = list(extra_args or [])
        self.running: list[_Job] = []
        self.pending: _Job | None = None

    def submit(self, checkpoint_dir: Path, step: int) -> None:
        job = _Job(step, Path(checkpoint_dir).resolve(), self.out_dir / step_name(step))
        if (job.out / "summary.json").is_file():  # a resumed finished run saves its last step again
            if self._same_evaluation(job):
                self.log(f"eval: step {step} was evaluated before ({job.out}); not again")
                return
            set_aside(job.out, "train", f"evaluation of step {step} (other tasks or checkpoint)")
        if len(self._alive()) < self.cfg.max_in_flight:
            self._start(job)
            return
        if self.pending is not None:
            self.log(f"eval: skipping step {self.pending.step}: superseded by step {step} while "
                     f"{self.cfg.max_in_flight} evaluation(s) still run")
        self.pending = job

    def _same_evaluation(self, job: _Job) -> bool:
        """Whether job.out's summary is of this checkpoint on these tasks (a resume may change eval.tasks)."""
        try:
            summary = json.loads((job.out / "summary.json").read_text())
            return (summary.get("checkpoints") == [str(job.checkpoint)]
                    and sorted(summary.get("tasks", [])) == sorted(self.cfg.tasks))
        except (OSError, ValueError, AttributeError):
            return False

    def protected(self) -> set[str]:
        """Names of the checkpoints an evaluation still has to read: pruning keeps them."""
        jobs = self.running + ([self.pending] if self.pending else [])
        return {j.checkpoint.name for j in jobs}

    def poll(self) -> list[dict]:
        """Finished evaluations since the last call: {step, checkpoint, accuracy: {task: acc}, ...}."""
        done = [j for j in self.running if j.proc.poll() is not None]
        self.running = [j for j in self.running if j not in done]
        if self.pending is not None and len(self.running) < self.cfg.max_in_flight:
            job, self.pending = self.pending, None
            self._start(job)
        return [self._result(j) for j in done]

    def close(self, wait: bool = True, timeout: float | None = None) -> list[dict]:
        """wait=True: run what is queued and wait for all; else terminate. Returns the last results."""
        results, deadline = [], None if timeout is None else time.monotonic() + timeout
        while wait and (self.running or self.pending):
            results += self.poll()
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if self.pending is not None:
            self.log(f"eval: dropping queued step {self.pending.step} at close")
            self.pending = None
        for j in self.running:
            self.log(f"eval: terminating the evaluation of step {j.step}")
            os.killpg(j.proc.pid, signal.SIGTERM)  # its own session: vLLM's engine process goes too
            try:
                j.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(j.proc.pid, signal.SIGKILL)
                j.proc.wait()
        self.running = []
        return results

    def _alive(self) -> list[_Job]:
        return [j for j in self.running if j.proc.poll() is None]

    def _start(self, job: _Job) -> None:
        job.out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "qr_ds", "eval", "--checkpoint", str(job.checkpoint), "--out", str(job.out),
               "--backend", self.cfg.backend, "--max-new-tokens", str(self.cfg.max_new_tokens),
               "--limit", str(self.cfg.limit), "--no-zero-shot", *self.extra_args]
        for name, path in self.cfg.tasks.items():
            cmd += ["--task", f"{name}={Path(path).resolve()}"]
        env = dict(os.environ)
        if self.cfg.device is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.cfg.device
        # -m puts the working dir first on sys.path; from the repo root its kernels/ folder would
        # shadow the `kernels` package transformers probes. Run in the output dir, and safe-path.
        env["PYTHONSAFEPATH"] = "1"
        log = (job.out / "eval.log").open("w")
        job.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=job.out, env=env,
                                    start_new_session=True)
        log.close()
        job.started = time.monotonic()
        self.running.append(job)
        self.log(f"eval: started step {job.step} (pid {job.proc.pid}) -> {job.out}")

    def _result(self, job: _Job) -> dict:
        res = {"step": job.step, "checkpoint": str(job.checkpoint), "out": str(job.out),
               "returncode": job.proc.returncode, "seconds": round(time.monotonic() - job.started, 1)}
        summary = job.out / "summary.json"
        if job.proc.returncode != 0 or not summary.is_file():
            tail = (job.out / "eval.log").read_text()[-2000:]
            self.log(f"eval: step {job.step} failed (exit {job.proc.returncode}); log {job.out / 'eval.log'}:\n{tail}")
            return {**res, "error": tail}
        rows = json.loads(summary.read_text())["rows"]
        # the students' rows only: a teacher row scores other questions than the dev file's
        res["accuracy"] = {f"{r['student']}/{t}": c["accuracy"] for r in rows if r["checkpoint"] != "teacher"
                           for t, c in r["tasks"].items()}
        if not res["accuracy"]:
            self.log(f"eval: step {job.step}: {summary} holds no student row")
            return {**res, "error": f"{summary}: no student row"}
        return res
