"""`qr-ds train` refuses, before launching, what its ranks would fail on 40-155 s later: each case runs
the real command in a subprocess and expects exit 2, the config key named, no traceback, and no launcher
output (no timing is asserted: a loaded machine takes any time to import torch)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


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


def train(tmp_path: Path, cfg: dict, *args: str, env_extra=None) -> tuple[subprocess.CompletedProcess, float]:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu", **(env_extra or {}))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "qr_ds", "train", "--config", str(path), *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)  # a guard, not a timing
    return proc, time.monotonic() - t0


def refused(proc: subprocess.CompletedProcess, seconds: float, *needles: str) -> str:
    err = proc.stderr
    assert proc.returncode == 2, err
    assert "Traceback" not in err and "Repo id must be in the form" not in err, err
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
    refused(*train(tmp_path, cfg, "--num-procs", "3"), "config key 'students[].ranks'", "2 + 2 does not fit",
            "the 3 processes started by --num-procs 3", "want a world of 4, or ranks: auto")


def test_ranks_against_a_hostfile_name_the_hostfile_not_num_procs(setup):
    tmp_path, cfg = setup
    (tmp_path / "hostfile").write_text("node1 slots=2\nnode2 slots=1\n")
    err = refused(*train(tmp_path, cfg, "--hostfile", str(tmp_path / "hostfile")), "1 + 1 does not fit",
                  f"3 processes started by hostfile {tmp_path / 'hostfile'} (node1:2 + node2:1)")
    assert "--num-procs" not in err  # the slots decide the world, not --num-procs


def test_a_hostfile_deepspeed_refuses_is_refused(setup):
    tmp_path, cfg = setup
    (tmp_path / "hostfile").write_text("node1 slots=1\nnode1 slots=1\n")
    refused(*train(tmp_path, cfg, "--hostfile", str(tmp_path / "hostfile")),
            f"--hostfile {tmp_path / 'hostfile'}: Hostfile contains multiple entries for node1")


def test_dry_run_checks_a_two_node_world_and_prints_each_ranks_work(setup):
    tmp_path, cfg = setup
    embedded_setup(tmp_path, cfg)
    for s in cfg["students"]:
        s["ranks"] = "auto"
    proc, _ = train(tmp_path, cfg, "--dry-run", "--nnodes", "2", "--num-procs", "2", "--resume", "auto")
    assert proc.returncode == 0, proc.stderr
    assert "world: 4 processes (--nnodes 2 x --num-procs 2)" in proc.stdout
    assert "ranks 0-1 on node 0: student 'a'" in proc.stdout and "ranks 2-3 on node 1: student 'b'" in proc.stdout
    assert "8 paths a chunk (micro_batch_paths) x 2 chunks" in proc.stdout and "= 16 paths" in proc.stdout
    assert not Path(cfg["output_dir"]).exists()  # nothing started, nothing written
    slurm = dict(SLURM_NNODES="3", SLURM_GPUS_PER_NODE="h100:1")
    proc, s = train(tmp_path, cfg, "--dry-run", env_extra=slurm)
    refused(proc, s, "auto does not fit the 3 processes started by SLURM (3 nodes x 1)",
            "want a world of a positive multiple of 2")
    refused(*train(tmp_path, cfg, "--nnodes", "2"), "--nnodes 2 is for --dry-run")
    (tmp_path / "hostfile").write_text("node1 slots=2\n")
    refused(*train(tmp_path, cfg, "--dry-run", "--nnodes", "2", "--hostfile", str(tmp_path / "hostfile")),
            "the hostfile names the nodes; give one")


def test_every_problem_is_reported_at_once(setup):
    tmp_path, cfg = setup
    cfg["students"][0]["model"] = str(tmp_path / "gone")
    cfg["data"]["pool"] = str(tmp_path / "gone.jsonl")
    err = refused(*train(tmp_path, cfg), "students[0].model", "data.pool")
    assert all(line.startswith("qr-ds train: error: ") for line in err.strip().splitlines()), err


# ---- issue 23: an existing run, contents of the inputs, nothing written on refusal ----

def embedded_setup(tmp_path: Path, cfg: dict) -> Path:
    """A real embedded pool (builders.make_pool): every content check passes on it."""
    from qr_ds.testing.builders import make_pool

    pool = make_pool(tmp_path / "data", n_questions=4)
    cfg["data"]["pool"] = str(pool)
    return pool


def finished_run(run: Path) -> None:
    (run / "checkpoints" / "step_000002").mkdir(parents=True)
    (run / "checkpoints" / "step_000002" / "meta.json").write_text('{"step": 2, "students": []}')
    (run / "checkpoints" / "latest").write_text("step_000002")
    (run / "metrics.jsonl").write_text('{"step": 2}\n')


def snapshot(folder: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_a_refused_run_creates_no_output_dir(setup):
    tmp_path, cfg = setup
    cfg["data"]["pool"] = str(tmp_path / "gone.jsonl")
    cfg["output_dir"] = str(tmp_path / "new" / "run")
    refused(*train(tmp_path, cfg), "config key 'data.pool'")
    assert not (tmp_path / "new").exists()


def test_training_into_a_finished_run_needs_resume_or_overwrite(setup):
    tmp_path, cfg = setup
    embedded_setup(tmp_path, cfg)
    run = Path(cfg["output_dir"])
    finished_run(run)
    before = snapshot(run)
    refused(*train(tmp_path, cfg), f"config key 'output_dir': {run} already holds a training run "
                                   "(checkpoint step_000002); pass --resume to continue it, or --overwrite")
    assert snapshot(run) == before
    proc, s = train(tmp_path, cfg, "--resume", "--overwrite")
    refused(proc, s, "give one")


def test_a_resume_refuses_changed_training_settings_and_announces_keys_new_since_it_started(setup):
    """A resumed run trains as it started: a changed setting (router.lr) is refused naming both values,
    the run untouched; a longer run is fine; a key its config.yaml lacks (data.drop_cut_wrong, added
    after the run started) is announced with the value it takes, not switched on in silence."""
    from qr_ds.config import from_dict, to_dict
    from qr_ds.train.config import TrainConfig
    from qr_ds.train.preflight import resume_config_changes

    tmp_path, cfg = setup
    embedded_setup(tmp_path, cfg)
    run = Path(cfg["output_dir"])
    finished_run(run)
    started = to_dict(from_dict(TrainConfig, cfg))
    del started["data"]["drop_cut_wrong"]
    (run / "config.yaml").write_text(yaml.safe_dump(started))
    before = snapshot(run)
    refused(*train(tmp_path, {**cfg, "router": {"lr": 0.01}}, "--resume"),
            f"config key 'router.lr': the run in {run} trained with 0.001, this start gives 0.01; "
            "a resumed run keeps its training settings")
    assert snapshot(run) == before
    problems, notes = resume_config_changes(from_dict(TrainConfig, {**cfg, "max_steps": 9}))
    assert problems == []
    assert notes == [f"resume: {run / 'config.yaml'} predates these config keys, which take these values from "
                     "now on: data.drop_cut_wrong=True"]
    started["router"]["withhold"] = {"a": "ids.txt"}  # a value where today's config has none: one change
    started["students"][0]["model"] = os.path.relpath(started["students"][0]["model"])  # the same folder
    started["students"][1]["lora"]["target_modules"] = ["q_proj"]
    (run / "config.yaml").write_text(yaml.safe_dump(started))
    assert [p.split(";")[0] for p in resume_config_changes(from_dict(TrainConfig, cfg))[0]] == [
        f"config key 'router.withhold.a': the run in {run} trained with 'ids.txt', this start gives nothing",
        f"config key 'students[1].lora.target_modules': the run in {run} trained with ['q_proj'], this start gives "
        "['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']"]
    (run / "config.yaml").write_text("")  # not the run's config: refused, never read as 'no settings'
    assert "is not the run's config (not a YAML mapping)" in resume_config_changes(from_dict(TrainConfig, cfg))[0][0]


@pytest.mark.parametrize("latest,needle", [
    ("../../outside/step_9", "checkpoints/latest: names '../../outside/step_9', not a step_NNNNNN folder"),
    ("", "checkpoints/latest: names '', not a step_NNNNNN folder"),
])
def test_a_latest_that_leaves_the_run_is_refused(setup, latest, needle):
    tmp_path, cfg = setup
    embedded_setup(tmp_path, cfg)
    run = Path(cfg["output_dir"])
    finished_run(run)
    (run / "checkpoints" / "latest").write_text(latest)
    refused(*train(tmp_path, cfg, "--resume"), needle)


def test_resume_without_a_checkpoint_and_a_run_inside_another_are_refused(setup):
    tmp_path, cfg = setup
    embedded_setup(tmp_path, cfg)
    refused(*train(tmp_path, cfg, "--resume"), "has no complete checkpoint (no checkpoints/latest)")
    finished_run(Path(cfg["output_dir"]))
    cfg["output_dir"] = str(Path(cfg["output_dir"]) / "checkpoints" / "step_000002" / "mine")
    refused(*train(tmp_path, cfg), "is inside another training run", "choose a folder outside it")
    assert not Path(cfg["output_dir"]).exists()


def test_contents_are_checked_before_launch(setup):
    tmp_path, cfg = setup
    pool = embedded_setup(tmp_path, cfg)
    import numpy as np

    matrix = next(pool.parent.glob("*.npy"))
    (tmp_path / "ds.json").write_text('{"train_micro_batch_size_per_gpu": 1,\n "zero_optimization": {stage: 2}}')
    cfg["students"][1]["deepspeed"] = str(tmp_path / "ds.json")
    cfg["seed"] = 2**70
    np.save(matrix, np.full(np.load(matrix).shape, np.nan, np.float32))
    err = refused(*train(tmp_path, cfg), f"config key 'students[1].deepspeed': {tmp_path / 'ds.json'}:2: not valid JSON",
                  "config key 'seed': 1180591620717411303424 is outside 0..4294967295")
    assert "is not finite" not in err  # contents wait for the simple problems: one round of fixes at a time
    cfg["seed"], cfg["students"][1]["deepspeed"] = 0, "ds_configs/zero2.json"
    refused(*train(tmp_path, cfg), f"config key 'data.pool': {pool}:1: record ", "is not finite (NaN or inf)")
    matrix.write_bytes(b"")
    refused(*train(tmp_path, cfg), f"config key 'data.pool': {pool}:1: record ",
            f"embedding file {matrix.resolve()} is empty or cut short")


def test_an_empty_question_is_set_aside_with_its_line(setup):
    """The pool reader (issue 35) sets such a record aside, named by file:line, for every stage alike:
    training never sees it (it would be trained on as if it asked something)."""
    from qr_ds.data.pool import load_pool

    tmp_path, cfg = setup
    pool = embedded_setup(tmp_path, cfg)
    rows = [json.loads(line) for line in pool.read_text().splitlines()]
    rows[2]["question"] = "  "
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    said = []
    kept = load_pool(pool, log=said.append).records
    assert rows[2]["id"] not in {r.id for r in kept} and len(kept) == len(rows) - 1
    assert any(f"{pool}:3: field 'question': must not be empty" in m for m in said), said


def test_a_deepspeed_json_with_a_bom_is_read_alike_by_preflight_and_ranks(tmp_path):
    """One reader: what preflight passes, the ranks' ds_config reads (it once failed on a BOM)."""
    from qr_ds.distributed.engines import ds_config
    from qr_ds.train.preflight import deepspeed_json_problem

    path = tmp_path / "ds.json"
    path.write_bytes(b'\xef\xbb\xbf{"zero_optimization": {"stage": 0}}')
    assert deepspeed_json_problem("students[0].deepspeed", path) == []
    assert ds_config(path, 1, 1, 1.0, "float32")["zero_optimization"] == {"stage": 0}
    path.write_text("[1]")
    assert deepspeed_json_problem("students[0].deepspeed", path) == [
        f"config key 'students[0].deepspeed': {path}: expected a JSON object, got list"]


def test_overrides_after_a_flag_are_overrides_and_a_stray_argument_is_named_by_the_subcommand(setup, capsys):
    from qr_ds.cli import build_parser, parse_args

    args = parse_args(build_parser(), ["train", "--config", "c.yaml", "epochs=2", "--dry-run", "seed=3"])
    assert args.overrides == ["epochs=2", "seed=3"] and args.dry_run
    with pytest.raises(SystemExit) as e:
        parse_args(build_parser(), ["train", "--config", "c.yaml", "--dry-run", "--bogus", "seed=3"])
    assert e.value.code == 2 and "usage: qr-ds train" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a sub-subcommand's stray flag: its own usage, not `qr-ds data`'s
        parse_args(build_parser(), ["data", "export", "gsm8k", "--out", "x.jsonl", "--bogus"])
    assert "usage: qr-ds data export" in capsys.readouterr().err
    tmp_path, cfg = setup
    embedded_setup(tmp_path, cfg)
    proc, _ = train(tmp_path, cfg, "--dry-run", "micro_batch_paths=3")
    assert proc.returncode == 0 and "3 paths a chunk (micro_batch_paths)" in proc.stdout, proc.stderr
    assert "world: 2 processes (2 a node by the students' fixed ranks)" in proc.stdout  # no --num-procs given
    refused(*train(tmp_path, cfg, "--dry-run", "--resume", "no"), "--resume no: give --resume alone, or --resume auto")


def test_a_lora_target_the_model_lacks_is_refused_by_the_dry_run(setup):
    """The ranks refused it only after loading every model (minutes for a 7B); the dry run builds the
    model's modules from its config alone, on the meta device."""
    tmp_path, cfg = setup
    embedded_setup(tmp_path, cfg)
    cfg["students"][0]["lora"] = {"target_modules": ["q_proj", "v_porj"]}
    refused(*train(tmp_path, cfg, "--dry-run"),
            "config key 'students[0].lora.target_modules': ['v_porj'] name no module of", "'v_proj'")
    cfg["students"][0]["lora"] = {"target_modules": ["q_proj", "v_proj"]}
    proc, _ = train(tmp_path, cfg, "--dry-run")
    assert proc.returncode == 0, proc.stderr


def test_a_max_len_over_the_models_positions_is_refused_naming_the_key_that_set_it(setup):
    """Tokenizers converted from GGUF say model_max_length 1e30: nothing else stops a path there."""
    tmp_path, cfg = setup
    embedded_setup(tmp_path, cfg)
    cfg["data"]["max_len"] = 4096  # the fake students are Llama's defaults: 2048 positions
    cfg["students"][1]["max_len"] = 2048
    err = refused(*train(tmp_path, cfg, "--dry-run"), "config key 'data.max_len': 4096 tokens is over",
                  "2048 positions (max_position_embeddings); give at most 2048")
    assert "students[1]" not in err
    cfg["students"][1]["max_len"] = 3000
    refused(*train(tmp_path, cfg, "--dry-run"), "config key 'students[1].max_len': 3000 tokens is over")


def test_an_output_dir_that_holds_an_input_or_the_working_directory_is_refused(setup):
    """--overwrite moves output_dir aside whole: it once moved the pool and the models with it."""
    tmp_path, cfg = setup
    cfg["output_dir"] = str(tmp_path)
    err = refused(*train(tmp_path, cfg, "--overwrite"), f"{tmp_path} holds the input data.pool",
                  "holds the input students[0].model", "holds the config file")
    assert "every check passed" not in err and (tmp_path / "pool.jsonl").is_file()
    cfg["output_dir"] = str(ROOT.parent)  # train() runs in ROOT
    refused(*train(tmp_path, cfg, "--dry-run"), "is the working directory or a folder above it")


def test_a_dry_run_names_the_pool_lines_the_ranks_will_skip_writes_nothing_and_refuses_a_repeated_id(setup):
    tmp_path, cfg = setup
    pool = embedded_setup(tmp_path, cfg)
    lines = pool.read_text().splitlines()
    pool.write_text("\n".join(lines[:2] + ['{"id": "cut short'] + lines[2:]) + "\n")
    before = snapshot(pool.parent)
    proc, _ = train(tmp_path, cfg, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "data.pool: 1 lines are not records and will not train" in proc.stderr
    assert f"the first, {pool}:3: not valid JSON" in proc.stderr
    assert snapshot(pool.parent) == before  # no quarantine file: nothing is written
    pool.write_text("\n".join(lines + lines[:1]) + "\n")
    refused(*train(tmp_path, cfg, "--dry-run"), "1 path id(s) occur more than once",
            f"at lines 1, {len(lines) + 1}")


def test_launcher_flags_out_of_range_are_refused_not_ignored(setup):
    """--num-procs 0 was ignored and printed as 2 processes; a port past 65535 reached the launcher."""
    tmp_path, cfg = setup
    refused(*train(tmp_path, cfg, "--dry-run", "--num-procs", "0"), "--num-procs 0: give a number from 1")
    refused(*train(tmp_path, cfg, "--master-port", "70000"), "--master-port 70000: give a number from 1 to 65535")
    refused(*train(tmp_path, cfg, "--dry-run", "--nnodes", "2"), "--nnodes 2: this node shows no GPU to count")


def test_a_resume_refuses_a_pool_that_changed_under_the_same_path(setup):
    """A resume continues its epoch by batch position: over another pool those positions are other paths."""
    from qr_ds.config import from_dict
    from qr_ds.data.jsonl import file_sha256
    from qr_ds.train.config import TrainConfig
    from qr_ds.train.preflight import pool_changed_problems

    tmp_path, cfg = setup
    pool = embedded_setup(tmp_path, cfg)
    run = Path(cfg["output_dir"])
    finished_run(run)
    train_cfg = from_dict(TrainConfig, cfg)
    assert pool_changed_problems(train_cfg) == []  # a run older than the record: nothing to compare
    (run / "pool.sha256").write_text(file_sha256(pool) + "\n")
    assert pool_changed_problems(train_cfg) == []
    pool.write_text("".join(pool.read_text().splitlines(keepends=True)[1:]))  # one path fewer
    refused(*train(tmp_path, cfg, "--resume"), f"config key 'data.pool': {pool} is not the pool the run in {run} "
                                               "started on", "put the pool back, or start a new run")


def test_the_ranks_of_qr_ds_train_hear_by_argument_that_the_checks_ran():
    """Not by environment: over pdsh the DeepSpeed runner passes only a few variables to other hosts,
    and rank 0 there ran the checks again and found the wrapper's own output lock held."""
    from argparse import Namespace

    from qr_ds.train.command import launcher_command

    args = Namespace(hostfile=Path("hostfile"), master_port=1234, config=Path("c.yaml"), resume="auto",
                     overrides=["epochs=2"])
    cmd = launcher_command(args, 4)
    assert cmd[cmd.index("--config"):] == ["--config", "c.yaml", "--preflight-done", "--resume", "auto", "epochs=2"]


def test_a_fixed_assignment_that_matches_nothing_in_the_pool_is_refused_before_launch(setup):
    """The ranks refused these only after loading every model."""
    tmp_path, cfg = setup
    pool = embedded_setup(tmp_path, cfg)
    ids = tmp_path / "ids.txt"
    ids.write_text("not/a/path\nnor/this\n")
    cfg["router"] = {"enabled": True, "fixed": {"a": ["cot", "cots"]}, "withhold": {"b": str(ids)}}
    refused(*train(tmp_path, cfg, "--dry-run"), "config key 'router.fixed.a': styles ['cots'] are not in the pool",
            f"config key 'router.withhold.b': none of the 2 path ids in {ids} is a path of this run (first: 'not/a/path')")
    first_id = json.loads(pool.read_text().splitlines()[0])["id"]
    ids.write_text(f"not/a/path\n{first_id}\n")
    cfg["router"]["fixed"]["a"] = ["cot"]
    proc, _ = train(tmp_path, cfg, "--dry-run")
    assert proc.returncode == 0, proc.stderr
