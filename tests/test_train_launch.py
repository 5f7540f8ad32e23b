"""The trainer through the real DeepSpeed launcher on CPU (gloo): runs, resume, adapters, failures."""
import glob
import json
import os
import shutil
import signal
import time

import pytest
import torch

from qr_ds.testing import builders as trainkit

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    pool = trainkit.make_pool(d / "pool")
    studs = trainkit.make_students(d / "students", pool, kinds=("llama-bpe", "gemma-unigram", "qwen-bpe"))
    return d, pool, studs


def _ok(res):
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]


def _metrics(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def _adapter(run, name, step):
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoints" / f"step_{step:06d}" / "students" / name / "adapter" /
                         "adapter_model.safetensors"))


def test_two_students_resume_equals_straight_run(kit):
    """4 steps straight == 2 steps, stop, resume, 2 steps; adapters load with peft; router learns."""
    d, pool, studs = kit
    run = d / "run2"
    cfg = trainkit.write_config(d / "two.yaml", studs[:2], pool, run, max_steps=4, save_every=2, keep_last=3)
    _ok(trainkit.launch(cfg, 2))
    rows = _metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["mutual_loss"] > 0 for r in rows) and all(r["sft_loss/llama"] > 0 for r in rows)
    assert set(rows[0]["route_rate/gemma"]) <= {"vanilla", "cot", "tot", "program", "fact_retrieval", "backward"}
    from qr_ds.data.jsonl import file_sha256

    assert (run / "pool.sha256").read_text() == file_sha256(pool) + "\n"  # what a resume checks its pool against

    # The router moved: its saved weights differ from the seeded initial ones.
    from qr_ds.routing.router import Router

    torch.manual_seed(0)
    init = Router(16, 2, 16).state_dict()
    saved = torch.load(run / "checkpoints/step_000004/router.pt")["router"]
    assert any(not torch.equal(init[k], saved[k]) for k in init)

    # Resume from step 2 in a copy of the run and finish: same adapters as the straight run.
    resumed = d / "run2r"
    shutil.copytree(run, resumed)
    (resumed / "checkpoints/latest").write_text("step_000002")
    shutil.rmtree(resumed / "checkpoints/step_000004")
    (resumed / "metrics.jsonl").unlink()
    cfg_r = trainkit.write_config(d / "two_r.yaml", studs[:2], pool, resumed, max_steps=4, save_every=2, keep_last=3)
    _ok(trainkit.launch(cfg_r, 2, "--resume"))
    assert [r["step"] for r in _metrics(resumed)] == [3, 4]
    for name in ("llama", "gemma"):
        a, b = _adapter(run, name, 4), _adapter(resumed, name, 4)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
        assert any(not torch.equal(a[k], _adapter(run, name, 2)[k]) for k in a)  # it trained

    # A saved adapter loads with peft on its base model.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(studs[0]))
    model = PeftModel.from_pretrained(base, str(run / "checkpoints/step_000004/students/llama/adapter"))
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert loaded and all(torch.isfinite(v).all() for v in loaded.values())
    meta = json.loads((run / "checkpoints/step_000004/meta.json").read_text())
    assert [s["name"] for s in meta["students"]] == ["llama", "gemma"]


def test_two_students_two_ranks_each(kit):
    d, pool, studs = kit
    run = d / "run22"
    cfg = trainkit.write_config(d / "twotwo.yaml", studs[:2], pool, run, ranks=[2, 2], max_steps=2)
    _ok(trainkit.launch(cfg, 4))
    rows = _metrics(run)
    assert len(rows) == 2 and rows[-1]["mutual_loss"] > 0
    # DeepSpeed's CPU all-reduce leaves a 66 MiB /dev/shm file per rank; hundreds of runs filled a
    # CI machine's memory until vLLM refused to start. The trainer must leave none behind. Only this
    # launch's files count (named by its rendezvous port, which rank 0's pid file holds): another
    # DeepSpeed job on the machine has its own.
    port = (run / "ranks" / "rank0.pid").read_text().split()[1].rsplit(":", 1)[1]
    assert port.isdigit()
    assert glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*") == []
    assert (run / "checkpoints/step_000002/students/gemma/adapter/adapter_config.json").is_file()


def test_three_students_unequal_tokenizers(kit):
    d, pool, studs = kit
    run = d / "run3"
    cfg = trainkit.write_config(d / "three.yaml", studs, pool, run, max_steps=2, save_every=1, keep_last=2,
                                mutual={"shared_dim": 16, "max_spans": 8, "paths": "all"})
    _ok(trainkit.launch(cfg, 3))
    rows = _metrics(run)
    names = ("llama", "gemma", "qwen")
    assert all(r["mutual_loss"] > 0 and all(r[f"sft_loss/{n}"] > 0 for n in names) for r in rows), rows
    # A head learns only from the mutual term, which it enters through the spans its tokenizer shares
    # with the other two: with paths: all, every student's head moves at every step.
    for name in names:
        heads = [torch.load(run / f"checkpoints/step_{k:06d}/students/{name}/mutual_head.pt", weights_only=True)
                 for k in (1, 2)]
        assert any(not torch.equal(heads[0][k], heads[1][k]) for k in heads[0]), f"{name}'s head never moved"


def _training_rank1(kit, name: str, timeout_s: int):
    """A long two-student run in the background, once it logs: (launcher process, rank 1's pid)."""
    d, pool, studs = kit
    run = d / name
    cfg = trainkit.write_config(d / f"{name}.yaml", studs[:2], pool, run, max_steps=500, collective_timeout_s=timeout_s)
    proc = trainkit.launch(cfg, 2, background=True)
    pid_file = run / "ranks" / "rank1.pid"
    deadline = time.time() + 240
    while time.time() < deadline and not ((run / "metrics.jsonl").is_file() and pid_file.is_file()):
        time.sleep(0.5)
    assert pid_file.is_file(), "training never started"
    return proc, int(pid_file.read_text().split()[0])  # "pid launch"


def test_killed_rank_ends_job_naming_it(kit):
    proc, pid = _training_rank1(kit, "runkill", 60)
    t0 = time.time()
    os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert time.time() - t0 < 60, "the job outlived its collective timeout"
    # Named by the survivor (the launcher's own line prints the last command it spawned, whichever died).
    assert "[qr_ds] rank 1 (pid" in err and "is gone" in err


def test_stopped_rank_ends_job_naming_it(kit):
    """SIGSTOP: the rank is alive but every collective waits on it; the survivor's timeout names it."""
    proc, pid = _training_rank1(kit, "runstop", 20)
    os.kill(pid, signal.SIGSTOP)
    try:
        out, err = proc.communicate(timeout=180)
    finally:
        if os.path.exists(f"/proc/{pid}"):  # the launcher may not have reaped it
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert f"[qr_ds] rank 1 (pid {pid}) is stopped" in err


def test_bad_inputs_refused_before_models_load(kit, tmp_path):
    d, pool, studs = kit
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg = trainkit.write_config(tmp_path / "c.yaml", studs[:2], empty, tmp_path / "run")
    res = trainkit.launch(cfg, 2)
    assert res.returncode != 0
    assert f"config key 'data.pool': {empty}: nothing to train on" in res.stderr  # rank 0's preflight
    assert "Loading weights" not in res.stderr  # refused before any model loaded


def _pool_the_filter_would_cut(folder):
    """The kit's pool (8 questions x 6 styles) with one style answered wrong and one judged INVALID:
    the quality filter keeps 32 of its 48 paths."""
    from qr_ds.data.pool import JudgeVerdict, load_pool, write_pool

    path = trainkit.make_pool(folder)
    records = load_pool(path).records
    for r in records:
        r.correct = r.style != "backward"
        if r.style == "tot":
            r.judge = JudgeVerdict("INVALID", "scripted")
    write_pool(path, records)
    assert sum(r.correct and r.judge.verdict == "VALID" for r in records) == 32 and len(records) == 48
    return path


@pytest.mark.parametrize("name,over,procs", [
    ("colocated", {"placement": "colocated"}, 1),
    ("no_route_no_filter", {"router": {"enabled": False}, "data": {"quality_filter": False}}, 2),
    ("no_mutual_frozen", {"mutual": {"enabled": False}, "frozen": 1}, 2),
    ("single_path_sft", {"router": {"enabled": False}, "mutual": {"enabled": False}, "single": True}, 1),
    ("zero3", {"zero3": True}, 2),
    ("full_finetune_zero3", {"zero3": True, "full": True}, 2),
    ("torchrun", {"torchrun": True}, 2),
])
def test_placements_and_ablations(kit, name, over, procs):
    d, pool, studs = kit
    run = d / f"abl_{name}"
    over = dict(over)
    frozen, single = over.pop("frozen", None), over.pop("single", False)
    zero3, torchrun, full = over.pop("zero3", False), over.pop("torchrun", False), over.pop("full", False)
    if name == "no_route_no_filter":
        pool = _pool_the_filter_would_cut(d / "mixed_pool")
    data = {"pool": str(pool), "max_len": 256, **over.pop("data", {})}
    if single:
        data["paths_per_question"] = 1
    cfg = trainkit.write_config(d / f"{name}.yaml", studs[:1] if single else studs[:2], pool, run,
                                max_steps=2, data=data, **over)
    import yaml

    c = yaml.safe_load(cfg.read_text())
    if frozen is not None:
        c["students"][frozen]["frozen"] = True
    if zero3:  # different students under ZeRO-3: its trace check must stay inside each student's group
        for s in c["students"]:
            s["deepspeed"] = s["deepspeed"].replace("zero2", "zero3")
    if full:
        for s in c["students"]:
            s["finetune"] = "full"
    cfg.write_text(yaml.safe_dump(c))
    res = trainkit.launch(cfg, procs, launcher="torchrun" if torchrun else "deepspeed")
    _ok(res)
    rows = _metrics(run)
    assert [r["step"] for r in rows] == [1, 2]
    if name == "no_route_no_filter":  # the wrong and the rejected paths too: all 48
        assert "training on 48 paths of 8 questions" in res.stdout, res.stdout[-3000:]
    if "router" in over:
        assert all(r["routed/llama"] == 1.0 for r in rows)
    if over.get("mutual") == {"enabled": False} or single:
        assert all("mutual_loss" not in r for r in rows)  # missing, never logged as 0
    if name == "colocated":
        assert rows[-1]["mutual_loss"] > 0
    if full:  # whole models, gathered from ZeRO-3 shards, trained, and served by eval as weight swaps
        from safetensors.torch import load_file

        from qr_ds.eval.checkpoints import read_checkpoint

        ckpt = run / "checkpoints" / "step_000002"
        for student, base in (("llama", studs[0]), ("gemma", studs[1])):
            trained, init = load_file(str(ckpt / "students" / student / "model" / "model.safetensors")), \
                load_file(str(base / "model.safetensors"))
            assert trained.keys() == init.keys() and all(v.numel() > 0 for v in trained.values())
            assert any(not torch.equal(trained[k], init[k]) for k in init)
        assert all(a.full and a.path.name == "model" for a in read_checkpoint(ckpt))
    elif zero3:  # the adapter was gathered from its shards, not saved empty
        assert all(v.numel() > 0 for v in _adapter(run, "llama", 2).values())
    if frozen is not None:
        a = _adapter(run, "gemma", 2)
        assert all(torch.count_nonzero(v) == 0 for k, v in a.items() if "lora_B" in k)  # never updated


def test_evaluation_during_training(kit, tmp_path):
    """Checkpoints are evaluated in a background process while training goes on; results are logged."""
    from qr_ds.tasks import write_synthetic

    d, pool, studs = kit
    write_synthetic(tmp_path / "dev.jsonl", 4, seed=3)
    run = tmp_path / "run_eval"
    cfg = trainkit.write_config(tmp_path / "ev.yaml", studs[:2], pool, run, max_steps=2,
                                eval={"every_steps": 1, "tasks": {"synthetic": str(tmp_path / "dev.jsonl")},
                                      "backend": "hf", "max_new_tokens": 8, "limit": 4})
    _ok(trainkit.launch(cfg, 2, timeout=600))
    evals = [json.loads(l) for l in (run / "eval.jsonl").read_text().splitlines()]
    assert {e["step"] for e in evals} <= {1, 2} and 2 in {e["step"] for e in evals}  # step 1 may be superseded
    last = [e for e in evals if e["step"] == 2][0]
    assert last["returncode"] == 0
    assert set(last["accuracy"]) == {f"{m}/synthetic" for m in ("llama", "gemma", "ensemble-logprob", "ensemble-vote")}
    assert (run / "eval" / "step_000002" / "summary.md").is_file()
