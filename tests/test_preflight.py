"""`qr-ds train` refuses, before launching, what its ranks would fail on 40-155 s later: each case runs
the real command in a subprocess and expects exit 2, the config key named, no traceback, in seconds."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
QUICK_S = 30  # import + checks; a launch alone takes longer than this on this machine


def fake_student(folder: Path) -> Path:
    """A folder with what preflight looks for (config.json, tokenizer files); never loaded here."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "tokenizer.json").write_text("{}")
    return folder


@pytest.fixture
def setup(tmp_path):
    """A config that passes every check; each test breaks one thing."""
    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps({"id": "q1/cot/0", "question": "What is  TWO plus two?", "response": "4"}) + "\n")
    cfg = {"students": [{"name": n, "model": str(fake_student(tmp_path / n)), "ranks": 1,
                         "deepspeed": "ds_configs/zero2.json"} for n in ("a", "b")],
           "data": {"pool": str(pool)}, "output_dir": str(tmp_path / "run")}
    return tmp_path, cfg


def train(tmp_path: Path, cfg: dict, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "qr_ds", "train", "--config", str(path), *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    return proc, time.monotonic() - t0


def refused(proc: subprocess.CompletedProcess, seconds: float, *needles: str) -> str:
    err = proc.stderr
    assert proc.returncode == 2, err
    assert "Traceback" not in err and "Repo id must be in the form" not in err, err
    assert seconds < QUICK_S, f"took {seconds:.0f}s: did it launch?"
    assert "deepspeed.launcher" not in err and "[qr_ds] rank" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_missing_model_path_is_named(setup):
    tmp_path, cfg = setup
    cfg["students"][0]["model"] = str(tmp_path / "nowhere" / "model")
    refused(*train(tmp_path, cfg), "config key 'students[0].model'", "does not exist")


def test_folder_without_config_json_is_not_a_model(setup):
    tmp_path, cfg = setup
    (tmp_path / "empty").mkdir()
    cfg["students"][1]["model"] = str(tmp_path / "empty")
    refused(*train(tmp_path, cfg), "config key 'students[1].model'", "folder without config.json: not a model")


def test_uncached_hub_name_offline_says_neither_local_nor_cached(setup):
    tmp_path, cfg = setup
    cfg["students"][0]["model"] = "no-such-org/no-such-model-7b"
    refused(*train(tmp_path, cfg), "config key 'students[0].model'",
            "neither a local folder nor in the Hugging Face cache", "HF_HUB_OFFLINE=1, so no hub is reachable")


def test_missing_tokenizer_is_named(setup):
    tmp_path, cfg = setup
    (tmp_path / "notok").mkdir()
    cfg["students"][1]["tokenizer"] = str(tmp_path / "notok")
    refused(*train(tmp_path, cfg), "config key 'students[1].tokenizer'", "not a tokenizer")


def test_missing_pool_is_named(setup):
    tmp_path, cfg = setup
    cfg["data"]["pool"] = str(tmp_path / "runs" / "embedded.jsonl")
    refused(*train(tmp_path, cfg), "config key 'data.pool'", "not found", "qr-ds embed")


def test_missing_deepspeed_json_is_named(setup):
    tmp_path, cfg = setup
    cfg["students"][0]["deepspeed"] = "ds_configs/zero9.json"
    refused(*train(tmp_path, cfg), "config key 'students[0].deepspeed'", "ds_configs/zero9.json not found")


def test_unwritable_output_dir_is_named(setup):
    tmp_path, cfg = setup
    (tmp_path / "a-file").write_text("")
    cfg["output_dir"] = str(tmp_path / "a-file" / "run")  # under a file: no one, root included, can write
    refused(*train(tmp_path, cfg), "config key 'output_dir'", "cannot write to")


def test_ranks_that_do_not_fit_the_world(setup):
    tmp_path, cfg = setup
    for s in cfg["students"]:
        s["ranks"] = 2
    refused(*train(tmp_path, cfg, "--num-procs", "3"), "config key 'students[].ranks'", "2 + 2 = 4",
            "would start 3")


def test_ranks_against_a_hostfile(setup):
    tmp_path, cfg = setup
    (tmp_path / "hostfile").write_text("node1 slots=2\nnode2 slots=1  # one GPU broken\n")
    refused(*train(tmp_path, cfg, "--hostfile", str(tmp_path / "hostfile")), "1 + 1 = 2", "would start 3")


def test_every_problem_is_reported_at_once(setup):
    tmp_path, cfg = setup
    cfg["students"][0]["model"] = str(tmp_path / "gone")
    cfg["data"]["pool"] = str(tmp_path / "gone.jsonl")
    err = refused(*train(tmp_path, cfg), "students[0].model", "data.pool")
    assert all(line.startswith("qr-ds train: error: ") for line in err.strip().splitlines()), err
