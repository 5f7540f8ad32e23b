"""`qr-ds data export --part`: train and dev are disjoint cuts of the training source that together
hold all of it, test is the evaluation split, and a train or dev part never reads a test split."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qr_ds.cli import main
from qr_ds.tasks import get_task
from qr_ds.tasks.export import SOURCES

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


def ids(path: Path) -> list[str]:
    return [e.id for e in get_task("gsm8k").load(str(path))]


def test_train_and_dev_are_disjoint_cuts_of_the_whole_source(tmp_path, capsys):
    src = SAMPLES / "gsm8k.jsonl"
    for part in ("train", "dev"):
        assert main(["data", "export", "gsm8k", "--part", part, "--dev-size", "7", "--out", str(tmp_path / f"{part}.jsonl"),
                     "--from-file", str(src)]) == 0
    train, dev, whole = ids(tmp_path / "train.jsonl"), ids(tmp_path / "dev.jsonl"), ids(src)
    assert len(dev) == 7 and not set(train) & set(dev) and sorted(train + dev) == sorted(whole)
    assert "dev cut (7 dev of" in capsys.readouterr().out
    assert get_task("gsm8k").load(str(tmp_path / "dev.jsonl")).split == "train"


@pytest.mark.parametrize("task,split", [("gsm8k", "test"), ("anli", "test_r3"), ("date_understanding", "validation")])
def test_a_train_part_that_would_read_the_test_split_is_refused(tmp_path, capsys, task, split):
    out = tmp_path / "x.jsonl"
    assert main(["data", "export", task, "--part", "train", "--split", split, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--part train: split {split!r} is {task}'s evaluation split" in err and not out.exists()


def test_every_task_has_a_training_source_that_is_not_its_test_split():
    from qr_ds.tasks.base import is_test_split

    for task, parts in SOURCES.items():
        assert not is_test_split(get_task(task), parts["train"][2]), task
        assert parts["test"][:1] + parts["test"][2:] == (get_task(task).hub[0], get_task(task).hub[2]), task


def test_offline_a_part_is_told_to_export_that_part_not_its_whole_source_split(tmp_path):
    """The hint once said `--split train` for a dev part: followed, it wrote all of train as dev."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "QR_DS_TRACEBACK": "0"}
    out = tmp_path / "dev.jsonl"
    proc = subprocess.run([sys.executable, "-m", "qr_ds", "data", "export", "gsm8k", "--part", "dev", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    message = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and not out.exists()
    assert f"`qr-ds data export gsm8k --part dev --out {out}`" in message, message
    assert f"`qr-ds data export gsm8k --part dev --from-file gsm8k_train_hub.jsonl --out {out}`" in message
    assert "--split" not in message
