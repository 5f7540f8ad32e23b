"""Experiment tracking through the real wandb client in offline mode: one run id across a resume (kept
in the run folder), WANDB_PROJECT honoured, and the run named by the config, not by its folder."""
import json

import wandb  # noqa: F401  (a dev dependency: this test must run, not skip)

from qr_ds.run_layout import RunDir
from qr_ds.train.metrics import TRACKING, MetricsLog, run_name



def _open(run: RunDir, resume_step, **config) -> MetricsLog:
    return MetricsLog(run, True, ["wandb"], {"output_dir": str(run.root), **config}, resume_step)


def test_resumed_offline_run_keeps_one_id(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "my-project")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = RunDir(tmp_path / "runs" / "gsm8k" / "train")
    first = _open(run, None, run_name="train-gsm8k")
    tracker = first.sinks[0]
    ids = [tracker.run.id]
    assert tracker.run.project == "my-project" and tracker.run.name == "train-gsm8k"
    tracker.log({"loss": 1.0}, 1)
    first.close()
    assert json.loads((run.root / TRACKING).read_text()) == {"wandb": ids[0]}

    resumed = _open(run, 1, run_name="train-gsm8k")  # what Trainer.fit(resume=True) opens
    ids.append(resumed.sinks[0].run.id)
    resumed.sinks[0].log({"loss": 0.5}, 2)
    resumed.close()
    assert ids[1] == ids[0]
    offline = sorted(p.name for p in (run.root / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(name.endswith(f"-{ids[0]}") for name in offline)

    fresh = _open(run, None)  # a new run into the same folder is a new tracker run
    assert fresh.sinks[0].run.id != ids[0] and fresh.sinks[0].run.name == "gsm8k/train"
    fresh.close()


def test_default_run_name_is_not_the_bare_folder():
    assert run_name({"output_dir": "runs/gsm8k/train"}) == "gsm8k/train"
    assert run_name({"output_dir": "runs/gsm8k/train", "run_name": "qr-distill-s0"}) == "qr-distill-s0"
