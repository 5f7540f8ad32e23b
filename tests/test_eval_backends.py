"""The transformers backend and the checks every backend relies on (no vLLM engine here)."""
import json
from pathlib import Path

import pytest
import torch

from evalkit import build_adapter, build_base, build_run, write_task_data
from qr_ds.config import ConfigError, from_dict
from qr_ds.eval.checkpoints import read_checkpoint
from qr_ds.eval.config import EvalConfig
from qr_ds.eval.generation import Request, new_lora, stop_ids
from qr_ds.eval.hf_backend import HFBackend
from qr_ds.eval.run import collect_adapters, evaluate, load_tasks
from qr_ds.eval.scoring import ensemble
from qr_ds.eval.vllm_backend import engine_rank


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    base = build_base(root / "base")
    build_run(root / "run", {"a": base, "b": base}, steps=[100])
    return root, base


def prompts(tok, n=5):
    texts = ["Ava has 3 apples.", "Ben has 12 coins. He gets 4 more and then doubles them.", "How many?",
             "Mia has 7 books. She loses 2.", "Zoe has 1 shell."][:n]
    return [tok(t)["input_ids"] for t in texts]


def test_batched_generation_matches_one_by_one_and_logprob_is_the_sequence_logprob(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, base = tiny
    tok = AutoTokenizer.from_pretrained(base)
    lora = new_lora("a", root / "run/checkpoints/step_000100/students/a/adapter")
    reqs = [Request(p, lora) for p in prompts(tok)] + [Request(p) for p in prompts(tok, 2)]
    stops = stop_ids(tok, str(base))
    batched = HFBackend(batch_size=8).generate(str(base), str(base), reqs, stops, max_new_tokens=8)
    single = HFBackend(batch_size=1).generate(str(base), str(base), reqs, stops, max_new_tokens=8)
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]
    assert [g.logprob for g in batched] == pytest.approx([g.logprob for g in single], abs=1e-4)
    assert batched[0].token_ids != batched[5].token_ids  # adapter vs base on the same prompt

    # the sum of the chosen tokens' log-probs, recomputed by one teacher-forced forward pass
    model = AutoModelForCausalLM.from_pretrained(base)
    g, p = batched[5], reqs[5].prompt_ids
    with torch.no_grad():
        logits = model(torch.tensor([p + g.token_ids])).logits[0, len(p) - 1:-1]
    ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(g.token_ids)[:, None]).sum().item()
    assert g.logprob == pytest.approx(ref, abs=1e-3)


def test_lora_ids_are_never_reused():
    ids = [new_lora("x", "same/path").lora_id for _ in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5


def test_engine_rank_rounds_up_to_a_vllm_rank():
    assert [engine_rank(r) for r in (1, 2, 8, 9, 32, 33)] == [1, 8, 8, 16, 32, 64]
    with pytest.raises(ValueError, match="above vLLM's largest"):
        engine_rank(1000)


def test_missing_adapter_is_named(tiny, tmp_path):
    root, base = tiny
    run = build_run(tmp_path / "run", {"a": base}, steps=[5])
    adapter = run / "checkpoints/step_000005/students/a/adapter"
    for f in adapter.iterdir():
        f.unlink()
    adapter.rmdir()
    with pytest.raises(FileNotFoundError, match="adapter of student 'a' missing"):
        read_checkpoint(run / "checkpoints/step_000005")


def test_adapter_on_another_base_is_refused(tiny, tmp_path):
    root, base = tiny
    ckpt = root / "run/checkpoints/step_000100"
    meta = json.loads((ckpt / "meta.json").read_text())
    other = tmp_path / "ckpt"
    other.mkdir()
    (other / "students").symlink_to(ckpt / "students")
    meta["students"][0]["model"] = "org/some-other-model"
    (other / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"trained on base model .* serves it on 'org/some-other-model'"):
        read_checkpoint(other)


def test_full_weights_missing_or_of_another_shape_are_refused(tiny, tmp_path):
    from evalkit import build_full

    from qr_ds.tiny import build_tiny_student

    root, base = tiny
    run = build_run(tmp_path / "run", {"c": base}, steps=[1], full=("c",))
    ckpt = run / "checkpoints/step_000001"
    (a,) = read_checkpoint(ckpt)
    assert a.full and a.rank == 0 and a.path == ckpt / "students/c/model"
    wide = build_tiny_student("llama-bpe", tmp_path / "wide", ["Ava has 3 apples."], vocab_size=300, hidden=192)
    build_full(wide, ckpt / "students/c/model", seed=0)
    with pytest.raises(ValueError, match=r"student 'c' does not have the shape of its base model .*hidden_size: 192 vs 128"):
        read_checkpoint(ckpt)
    import shutil

    shutil.rmtree(ckpt / "students/c/model")
    with pytest.raises(FileNotFoundError, match=r"weights of student 'c' missing"):
        read_checkpoint(ckpt)


def test_rank_above_max_lora_rank_is_refused(tiny, tmp_path):
    root, base = tiny
    run = tmp_path / "run"
    build_run(run, {"a": base}, steps=[1], r=16)
    cfg = from_dict(EvalConfig, {"run_dir": str(run), "tasks": {"synthetic": "x.jsonl"}, "max_lora_rank": 8})
    with pytest.raises(ValueError, match="has LoRA rank 16, above the engine's max_lora_rank 8"):
        collect_adapters(cfg)


def test_unknown_task_and_missing_data_file(tmp_path):
    data = write_task_data(tmp_path / "syn.jsonl")
    with pytest.raises(ValueError, match="unknown task 'gsm9k'"):
        load_tasks({"gsm9k": str(data)}, 0)
    with pytest.raises(FileNotFoundError, match="data file for task 'synthetic' not found: nope.jsonl"):
        load_tasks({"synthetic": "nope.jsonl"}, 0)
    assert len(load_tasks({"synthetic": str(data)}, 2)["synthetic"]) == 2
    with pytest.raises(ConfigError, match="tasks"):
        from_dict(EvalConfig, {"checkpoints": ["x"]})


def row(student, extracted, logprob, gold="5"):
    return {"checkpoint": "s1", "task": "synthetic", "id": "q", "student": student, "extracted": extracted,
            "logprob": logprob, "gold": gold, "correct": extracted == gold}


def test_ensembles_pick_by_logprob_and_by_vote_with_logprob_tiebreak():
    rows = [row("a", "5", -9.0), row("b", "5", -8.0), row("c", "7", -1.0)]
    picks = {r["student"]: r for r in ensemble(rows)}
    assert picks["ensemble-logprob"]["extracted"] == "7" and not picks["ensemble-logprob"]["correct"]
    assert picks["ensemble-vote"]["extracted"] == "5" and picks["ensemble-vote"]["from_student"] == "b"
    tie = {r["student"]: r for r in ensemble([row("a", "5", -3.0), row("b", "7", -2.0), row("c", None, -0.5)])}
    assert tie["ensemble-vote"]["extracted"] == "7"  # 1-1 tie: the likelier answer; no-answer does not vote
    assert tie["ensemble-logprob"]["extracted"] is None


def test_two_base_models_each_get_their_engine(tiny, tmp_path):
    root, base = tiny
    qwen = build_base(tmp_path / "qwen", kind="qwen-bpe", chat=False)  # plain prompt, tokenizer's BOS
    run = build_run(tmp_path / "run", {"llama": base, "qwen": qwen}, steps=[3])
    data = write_task_data(tmp_path / "syn.jsonl", n=2)
    cfg = from_dict(EvalConfig, {"run_dir": str(run), "tasks": {"synthetic": str(data)}, "backend": "hf",
                                 "max_new_tokens": 4, "zero_shot": False, "out": str(tmp_path / "out")})
    summary = evaluate(cfg, log=lambda m: None)
    methods = [r["method"] for r in summary["rows"]]
    assert methods == ["llama @ step_000003", "qwen @ step_000003", "ensemble-logprob @ step_000003",
                       "ensemble-vote @ step_000003"]
    served = {a["student"]: a["model"] for a in json.loads((tmp_path / "out/adapters.json").read_text())}
    assert served == {"llama": str(base), "qwen": str(qwen)}

    # each student's outputs are its own base model's with its adapter, on its own prompt format
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qr_ds.data.format import encode_prompt

    preds = [json.loads(l) for l in (tmp_path / "out/predictions.jsonl").read_text().splitlines()]
    for student, model_dir in (("llama", base), ("qwen", qwen)):
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir),
                                          str(run / "checkpoints/step_000003/students" / student / "adapter"))
        mine = [p for p in preds if p["student"] == student]
        assert len(mine) == 2 and all(("<|user|>" in p["prompt"]) == (student == "llama") for p in mine)
        for p in mine:
            ids = torch.tensor([encode_prompt(tok, p["prompt"])])
            with torch.no_grad():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=p["tokens"],
                                     min_new_tokens=p["tokens"], do_sample=False)
            assert tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == p["output"], (student, p["id"])


def test_checkpoints_of_several_runs_at_one_step_get_labels_that_tell_the_runs_apart():
    from qr_ds.eval.checkpoints import Adapter
    from qr_ds.eval.run import with_unique_labels

    def adapter(run: str, student: str) -> Adapter:
        path = Path(f"/x/runs/{run}/checkpoints/step_000006/students/{student}/model")
        return Adapter("step_000006", 6, student, "m", "m", path, 0, full=True)

    alone = with_unique_labels([adapter("qr/s0", "a"), adapter("qr/s0", "b")])
    assert [a.checkpoint for a in alone] == ["step_000006"] * 2  # one run: its step is name enough
    seeds = with_unique_labels([adapter(f"{m}/s{k}", "a") for m in ("qr", "no_route") for k in (0, 1)])
    assert [a.checkpoint for a in seeds] == ["qr/s0/step_000006", "qr/s1/step_000006",
                                             "no_route/s0/step_000006", "no_route/s1/step_000006"]
    runs = with_unique_labels([adapter("qr_s0", "a"), adapter("qr_s1", "a")])
    assert [a.checkpoint for a in runs] == ["qr_s0/step_000006", "qr_s1/step_000006"]


def test_vllm_start_fits_the_machine_and_names_its_root_cause(tiny, tmp_path, monkeypatch):
    """What the vLLM backend decides before and around an engine start (no vLLM here): the length
    capped to the model's limit, a memory fraction that fits what this host has free, and the
    engine's own root-cause line out of its log, which an engine process writes to fd 2."""
    import subprocess
    import sys

    import types

    import psutil
    import transformers

    from qr_ds.eval.vllm_backend import kv_cache_bytes, memory_fraction, model_limit, root_cause, stderr_kept

    assert model_limit(str(tiny[1])) == 1024  # the tiny model's max_position_embeddings
    if not torch.cuda.is_available():  # 6 of 24 GiB available
        assert memory_fraction(0.8, 6 / 24) == pytest.approx(0.9 * 6 / 24)  # not 0.8 of RAM others hold
        assert memory_fraction(0.1, 6 / 24) == 0.1  # never more than asked
        # the KV cache a CPU engine gets: what 32 sequences need (vLLM took 0.8 of all RAM for any model)
        c = transformers.AutoConfig.from_pretrained(tiny[1])
        per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 4
        assert kv_cache_bytes(str(tiny[1]), 512, "float32", 0.8) == per_token * 512 * 32
        gib = 2**30  # 6 of 24 GiB available: never above what memory_fraction allows of it
        monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(total=24 * gib, available=6 * gib))
        assert kv_cache_bytes(str(tiny[1]), 10**9, "float32", 0.8) == int(0.225 * 24 * gib)
    log = ("INFO 12-01 engine starting\nTraceback (most recent call last):\n  File \"x.py\", line 3\n"
           "ValueError: To serve at least one request with max_model_len (2048), 2.1 GiB KV cache is needed, "
           "which is larger than the available KV cache memory (0.4 GiB).\n"
           "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}\n")
    assert root_cause(log, RuntimeError("Engine core initialization failed")) == (
        "ValueError: To serve at least one request with max_model_len (2048), 2.1 GiB KV cache is needed, "
        "which is larger than the available KV cache memory (0.4 GiB).")
    try:
        try:
            raise OSError("no such model folder")
        except OSError as inner:
            raise RuntimeError("Engine core initialization failed") from inner
    except RuntimeError as e:
        assert root_cause("", e) == "OSError: no such model folder"
    with stderr_kept() as read:  # a child process writing to the inherited fd 2, as vLLM's engine core does
        subprocess.run([sys.executable, "-c", "import sys; print('KeyError: lora 3', file=sys.stderr)"], check=True)
        assert "KeyError: lora 3" in read()
