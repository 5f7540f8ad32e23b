"""Splits and leakage: generate reads train splits and refuses a test split, training refuses a pool
that shares questions with its dev files, and eval defaults to the test split."""
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from qr_ds.cli import main
from qr_ds.testing.stub_server import StubChatServer
from test_preflight import fake_student, refused, train


ROOT = Path(__file__).resolve().parents[1]


def qr_ds_offline(tmp_path, *args) -> subprocess.CompletedProcess:
    """`qr-ds ARGS` in a process of its own, with an empty Hugging Face cache of this test's and the hub
    off: neither a dataset cached on this machine nor HF_HUB_OFFLINE=0 can change the outcome (in this
    process `datasets` may already have read another cache and mode)."""
    hf = tmp_path / "hf"
    env = {**os.environ, "HF_HOME": str(hf), "HF_DATASETS_CACHE": str(hf / "datasets"), "HF_HUB_CACHE": str(hf / "hub"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "qr_ds", *args], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)


def gsm8k_file(path, questions, split=None):
    extra = {"source_split": split} if split else {}
    path.write_text("".join(json.dumps({"question": q, "answer": f"#### {i}", **extra}) + "\n"
                            for i, q in enumerate(questions)))
    return path


def generate_config(tmp_path, url, data, **over):
    cfg = {"task": "gsm8k", "data": str(data), "out": str(tmp_path / "pool.jsonl"), "styles": ["cot"],
           "teacher": {"backend": "openai", "model": "stub", "base_url": url, "max_retries": 0}, **over}
    path = tmp_path / "gen.yaml"
    path.write_text(yaml.safe_dump({"generate": cfg}))
    return str(path)


def test_generate_refuses_a_test_split_before_asking_the_teacher(tmp_path, capsys):
    data = gsm8k_file(tmp_path / "exported.jsonl", ["What is 1 plus 1?"], split="test")  # as `data export` writes
    with StubChatServer() as server:
        assert main(["generate", generate_config(tmp_path, server.url, data), "--no-progress"]) == 2
        assert server.seen == []
    err = capsys.readouterr().err
    assert "config key 'split'" in err and "split 'test' of gsm8k, a test split" in err
    assert "allow_test_split: true" in err and not (tmp_path / "pool.jsonl").exists()


def test_allow_test_split_lets_it_through(tmp_path):
    data = gsm8k_file(tmp_path / "exported.jsonl", ["What is 1 plus 1?"], split="test")
    with StubChatServer() as server:
        assert main(["generate", generate_config(tmp_path, server.url, data, allow_test_split=True),
                     "--no-progress"]) == 0
        assert len(server.seen) == 1


def test_a_split_key_cannot_contradict_the_records(tmp_path, capsys):
    data = gsm8k_file(tmp_path / "exported.jsonl", ["What is 1 plus 1?"], split="test")
    assert main(["generate", generate_config(tmp_path, "http://127.0.0.1:9/v1", data, split="train")]) == 2
    assert "'train', but the records of" in capsys.readouterr().err


def test_hub_data_defaults_to_train_and_refuses_test_before_downloading(tmp_path):
    url = "http://127.0.0.1:9/v1"
    res = qr_ds_offline(tmp_path, "generate", generate_config(tmp_path, url, "openai/gsm8k", split="test"))
    assert res.returncode == 2 and "split 'test' of gsm8k, a test split" in res.stderr, res.stderr
    res = qr_ds_offline(tmp_path, "generate", generate_config(tmp_path, url, "openai/gsm8k"))
    assert res.returncode == 2 and "split 'train'" in res.stderr, res.stderr  # offline: says what to fetch
    assert "HF_HUB_OFFLINE=1 and no cached copy" in res.stderr


def test_eval_reads_the_test_split_of_hub_data_by_default(tmp_path):
    res = qr_ds_offline(tmp_path, "eval", "--checkpoint", str(tmp_path), "--task", "gsm8k=openai/gsm8k",
                        "--backend", "hf")
    assert res.returncode == 2 and "openai/gsm8k, config 'main', split 'test'" in res.stderr, res.stderr


def test_train_refuses_a_pool_sharing_questions_with_its_dev_file(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": f"q{i}/cot/0", "question": q, "response": "x"}) + "\n"
                            for i, q in enumerate(["What is  TWO plus two?", "Name a prime."])))
    dev = gsm8k_file(tmp_path / "dev.jsonl", ["what is two\tplus two?", "What is 3 plus 3?"])
    cfg = {"students": [{"name": n, "model": str(fake_student(tmp_path / n))} for n in ("a", "b")],
           "data": {"pool": str(pool)}, "output_dir": str(tmp_path / "run"),
           "eval": {"every_steps": 10, "tasks": {"gsm8k": str(dev)}}}
    refused(*train(tmp_path, cfg), "config key 'eval.tasks.gsm8k'", f"1 of 2 questions of {dev}",
            "also in the training pool")
