"""`qr-ds data export`: the offline message, the writing path (a local file standing in for the hub
download through the same `datasets` code), the round trip back through `load`, and the split
that `load` records."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qr_ds.cli import main
from qr_ds.tasks import get_task, is_test_split

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


def test_offline_export_says_what_to_download(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "QR_DS_TRACEBACK": "0"}
    out = tmp_path / "arc.jsonl"
    proc = subprocess.run([sys.executable, "-m", "qr_ds", "data", "export", "arc_challenge", "--split", "test",
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and not out.exists()
    assert "Traceback" not in proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    for needed in ("allenai/ai2_arc", "'ARC-Challenge'", "split 'test'", "HF_HUB_OFFLINE=1",
                   "https://huggingface.co/datasets/allenai/ai2_arc",
                   f"qr-ds data export arc_challenge --split test --out {out}",
                   "load_dataset('allenai/ai2_arc', 'ARC-Challenge', split='test')"):
        assert needed in message, (needed, message)


def _hub_layout_arc(rows: list[dict]) -> list[dict]:
    """ARC release records in the hub's layout (allenai/ai2_arc): choices as {text: [...], label: [...]}."""
    return [{"id": r["id"], "question": r["question"]["stem"], "answerKey": r["answerKey"],
             "choices": {"text": [c["text"] for c in r["question"]["choices"]],
                         "label": [c["label"] for c in r["question"]["choices"]]}} for r in rows]


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_export_round_trip(tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]) -> None:
    import datasets

    release = [json.loads(line) for line in (SAMPLES / "arc_challenge.jsonl").read_text().splitlines()]
    download = tmp_path / f"download{suffix}"
    hub = datasets.Dataset.from_list(_hub_layout_arc(release))
    hub.to_parquet(str(download)) if suffix == ".parquet" else hub.to_json(str(download))
    out = tmp_path / "arc_test.jsonl"

    assert main(["data", "export", "arc_challenge", "--split", "test", "--out", str(out),
                 "--from-file", str(download)]) == 0
    assert "wrote 50 arc_challenge records" in capsys.readouterr().out

    task = get_task("arc_challenge")
    exported, original = task.load(str(out)), task.load(str(SAMPLES / "arc_challenge.jsonl"))
    assert [(e.id, e.question, e.gold) for e in exported] == [(e.id, e.question, e.gold) for e in original]
    assert exported.split == "test" and is_test_split(task, exported.split)


def test_export_refuses_records_of_another_task(tmp_path: Path) -> None:
    download = tmp_path / "gsm8k.jsonl"
    download.write_text((SAMPLES / "gsm8k.jsonl").read_text().splitlines()[0] + "\n")
    assert main(["data", "export", "anli", "--split", "test_r3", "--out", str(tmp_path / "x.jsonl"),
                 "--from-file", str(download)]) == 2
    assert not (tmp_path / "x.jsonl").exists()


def test_load_records_the_split() -> None:
    task = get_task("gsm8k")
    sample = str(SAMPLES / "gsm8k.jsonl")
    assert task.load(sample).split is None  # a file that does not say
    loaded = task.load(sample, split="train", limit=2)
    assert (loaded.split, loaded.source, len(loaded)) == ("train", sample, 2)
    assert task.hub_source("openai/gsm8k", None, None) == ("openai/gsm8k", "main", "test")
    assert task.hub_source("someone/gsm8k-copy:socratic", "train", None) == ("someone/gsm8k-copy", "socratic", "train")
    with pytest.raises(ValueError, match="config 'main' in the name but 'socratic' asked for"):
        task.hub_source("openai/gsm8k:main", None, "socratic")


@pytest.mark.parametrize("task,split,expected", [
    ("gsm8k", "test", True), ("gsm8k", "train", False), ("anli", "test_r1", True), ("anli", "train_r3", False),
    ("anli", "dev_r3", False), ("date_understanding", "validation", True), ("arc_challenge", "validation", False),
    ("math", None, False),
])
def test_is_test_split(task: str, split: str | None, expected: bool) -> None:
    assert is_test_split(task, split) is expected
