"""Malformed inputs through the command line: every refusal exits non-zero, names the file and
line (or the config key), shows no traceback unless QR_DS_TRACEBACK=1, and drops no valid line.

The inputs live in tests/fixtures/bad_inputs/ (see its README.md); each test works on a copy, since
loading a pool writes its quarantine file beside it. A few cases run the real `python -m qr_ds`
process (exit status and stderr as a user sees them); the rest call ``qr_ds.cli.main``, which
catches the same way, to keep this file fast.
"""
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qr_ds.cli import describe_error, main
from qr_ds.data.pool import load_pool, record_lines

FIXTURES = Path(__file__).parent / "fixtures" / "bad_inputs"
TRACEBACK = "Traceback (most recent call last)"


@pytest.fixture
def inputs(tmp_path):
    return Path(shutil.copytree(FIXTURES, tmp_path / "in"))


def qr_ds(cwd: Path, *args: str, traceback: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "QR_DS_TRACEBACK"}
    env["PYTHONSAFEPATH"] = "1"  # the checkout's kernels/ folder must not shadow a package
    if traceback:
        env["QR_DS_TRACEBACK"] = "1"
    return subprocess.run([sys.executable, "-m", "qr_ds", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def assert_refused(status: int, stderr: str, *needles: str) -> None:
    assert status != 0, stderr
    assert TRACEBACK not in stderr
    for needle in needles:
        assert needle in stderr, f"{needle!r} not in:\n{stderr}"


# ---- real processes ----

def test_embed_names_every_bad_pool_line_and_keeps_the_valid_ones(inputs):
    res = qr_ds(inputs, "embed", "embed_mixed.yaml", "--no-progress")
    assert_refused(res.returncode, res.stderr,
                   "pool_mixed.jsonl: accepted 4, rejected 6",
                   "pool_mixed.jsonl:2: not UTF-8 (byte 0xff",
                   "pool_mixed.jsonl:4: field 'embedding.file': '/etc/passwd' must be relative to the pool's folder",
                   "pool_mixed.jsonl:5: field 'embedding.file': '../elsewhere/emb.npy' must be relative",
                   "pool_mixed.jsonl:6: field 'embedding.row': expected an integer >= 0, got True",
                   "pool_mixed.jsonl:8: not valid JSON",
                   "qr-ds embed: error: pool_mixed.jsonl: only 4 of 10 paths can be embedded",
                   "pool_mixed.jsonl.quarantine.jsonl")
    assert res.returncode == 2 and not (inputs / "out").exists()  # stopped before the encoder loaded
    # the valid lines, raw U+2028 (line 3) and a CRLF ending (line 7) included, are all there
    report = load_pool(inputs / "pool_mixed.jsonl", log=lambda m: None)
    assert record_lines(report) == {"q1/cot/0": 1, "q3/cot/0": 3, "q7/cot/0": 7, "q10/cot/0": 10}
    assert "\u2028" in report.records[1].response
    assert [n for n, _ in report.rejected] == [2, 4, 5, 6, 8, 9]


def test_score_quarantines_bad_lines_and_scores_the_rest(inputs):
    res = qr_ds(inputs, "score", "--task", "gsm8k", "outputs_mixed.jsonl")
    # score's exit status is tasks/command.py's call: today it reports the rejects and exits 0
    assert TRACEBACK not in res.stderr and "rejected 3 malformed line(s)" in res.stdout
    assert "accuracy 100.00% (3/3)" in res.stdout  # lines 1, 3 (U+2028) and 5 (CRLF)
    for needle in ("outputs_mixed.jsonl:2: not UTF-8 (byte 0xe9", "outputs_mixed.jsonl:4: field 'output'",
                   "outputs_mixed.jsonl:6: expected a JSON object"):
        assert needle in res.stderr


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs a /sys that refuses new files")
def test_an_unwritable_output_folder_is_one_line_naming_it(inputs):
    res = qr_ds(inputs, "score", "--task", "gsm8k", "outputs_mixed.jsonl", "--out", "/sys/qr_ds_bad_inputs/s.jsonl")
    assert_refused(res.returncode, res.stderr, "qr-ds score: error: ")
    assert res.returncode == 1 and res.stderr.splitlines()[-1].endswith(": /sys/qr_ds_bad_inputs")


@pytest.mark.parametrize("args,needle", [
    (["train", "--config", "train_nan_lr.yaml"],
     "train_nan_lr.yaml: config key 'students[0].lr': got nan; allowed: a finite number"),
    (["generate", "generate_not_utf8.yaml"], "generate_not_utf8.yaml: not UTF-8 text (byte 0xe9 at offset 38)"),
    (["embed", "embed_empty.yaml"], "pool_empty.jsonl: nothing to embed: 0 records"),
])
def test_refusals_in_a_real_process(inputs, args, needle):
    res = qr_ds(inputs, *args)
    assert_refused(res.returncode, res.stderr, f"qr-ds {args[0]}: error: {needle}")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) <= 2  # the load summary, then the error


def test_qr_ds_traceback_shows_the_traceback(inputs):
    res = qr_ds(inputs, "generate", "generate_list.yaml", traceback=True)
    assert res.returncode != 0 and TRACEBACK in res.stderr
    assert "ConfigError: generate_list.yaml: expected a mapping at the top level, got list" in res.stderr


# ---- in process: the same main(), cheaper ----

@pytest.mark.parametrize("args,needle", [
    (["train", "--config", "train_inf_timeout.yaml"],
     "train_inf_timeout.yaml: config key 'collective_timeout_s': got inf; allowed: a finite number"),
    (["train", "--config", "train_unknown_key.yaml"], "train_unknown_key.yaml: unknown config key 'lamda1'"),
    (["train", "--config", "train_wrong_type.yaml"],
     "train_wrong_type.yaml: config key 'epochs': got 'ten'; allowed: an integer"),
    (["train", "--config", "train_bad_yaml.yaml"], "train_bad_yaml.yaml:3:1: not valid YAML: expected ',' or '}', but got '<stream end>' (while parsing a flow "
                                                   "mapping opened at line 2)"),
    (["generate", "generate_list.yaml"], "generate_list.yaml: expected a mapping at the top level, got list"),
    (["filter", "filter_nan_backoff.yaml"],
     "filter_nan_backoff.yaml: config key 'judge.backoff_s': got nan; allowed: a finite number"),
    (["embed", "embed_nan_share.yaml"],
     "embed_nan_share.yaml: config key 'min_embedded_share': got nan; allowed: a finite number"),
    (["embed", "embed_empty.yaml", "--set", "out.x=1"], "override 'out.x': 'x' is under a str"),
    (["score", "--task", "gsm8k", "missing.jsonl"], "no such file: missing.jsonl"),
    # round two (issue 23)
    (["train", "--config", "train_alias_bomb.yaml"],
     "train_alias_bomb.yaml:9: aliases expand to more than 100,000 values (an alias bomb?)"),
    (["train", "--config", "train_duplicate_key.yaml"],
     "train_duplicate_key.yaml:5: duplicate key 'epochs' (first at line 3)"),
    (["train", "--config", "train_did_you_mean.yaml"],
     "train_did_you_mean.yaml: unknown config key 'learning_rate' (did you mean 'students[].lr'?)"),
    (["train", "--config", "."], ".: is a folder, not a config file"),
])
def test_config_and_input_refusals(inputs, monkeypatch, capsys, args, needle):
    monkeypatch.chdir(inputs)
    monkeypatch.delenv("QR_DS_TRACEBACK", raising=False)
    status = main(args)
    assert_refused(status, capsys.readouterr().err, f"qr-ds {args[0]}: error: {needle}")
    assert status == 2


def test_an_unexpected_error_is_one_line_with_a_hint_and_exit_1(monkeypatch, capsys):
    import qr_ds.tasks

    def broken():
        raise RuntimeError("registry corrupted")

    monkeypatch.setattr(qr_ds.tasks, "list_tasks", broken)
    monkeypatch.delenv("QR_DS_TRACEBACK", raising=False)
    assert main(["tasks"]) == 1
    assert capsys.readouterr().err == ("qr-ds tasks: error: RuntimeError: registry corrupted "
                                       "(set QR_DS_TRACEBACK=1 for the traceback)\n")


@pytest.mark.parametrize("error,message,status", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/pool.jsonl"), "no space left on /data/pool.jsonl", 1),
    (OSError(errno.ENOSPC, "No space left on device"), "no space left on device", 1),
    (PermissionError(errno.EACCES, "Permission denied", "/ro/out"), "permission denied: /ro/out", 1),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/out.tmp", None, "/mnt/out"),
     "read-only file system: /mnt/out.tmp -> /mnt/out", 1),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "cfg.yaml"),
     "no such file or directory: cfg.yaml", 2),
])
def test_os_errors_read_as_one_line_naming_the_path(error, message, status):
    assert describe_error(error) == (message, status)


# ---- embeddings at use time (the trainer's path; no cheap command reaches it) ----

@pytest.mark.parametrize("keep,needle", [
    (["q1/cot/0", "q2/cot/0"], "pool_embedded.jsonl:2: record 'q2/cot/0': embedding.row 5 is out of range: "
                               "emb.npy has 2 rows"),
    (["q1/cot/0", "q3/cot/0"], "pool_embedded.jsonl:3: record 'q3/cot/0': embedding.text_hash "),
])
def test_embeddings_that_do_not_fit_their_pool_are_refused(inputs, keep, needle):
    from qr_ds.embed.lookup import EmbeddingError, gather_embeddings

    report = load_pool(inputs / "pool_embedded.jsonl", log=lambda m: None)
    records = [r for r in report.records if r.id in keep]
    with pytest.raises(EmbeddingError) as e:
        gather_embeddings(inputs / "pool_embedded.jsonl", records, record_lines(report))
    assert needle in str(e.value)
    assert gather_embeddings(inputs / "pool_embedded.jsonl", records[:1]).shape == (1, 4)


# ---- round two (issue 23) ----

def test_an_alias_bomb_is_one_short_line_in_a_real_process(inputs):
    res = qr_ds(inputs, "train", "--config", "train_alias_bomb.yaml")
    assert_refused(res.returncode, res.stderr, "train_alias_bomb.yaml:9: aliases expand")
    assert res.returncode == 2 and len(res.stderr) < 400  # before: this file made a 351 MB message


def test_a_byte_order_mark_is_not_part_of_the_first_record(inputs):
    report = load_pool(inputs / "pool_bom.jsonl", log=lambda m: None)
    assert record_lines(report) == {"q1/cot/0": 1, "q10/cot/0": 2} and not report.rejected


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``folder`` with its size and mtime: equal before and after means nothing was written."""
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.parametrize("args,needle", [
    (["filter", "filter_out_is_pool.yaml"],
     "filter_out_is_pool.yaml: config key 'out': pool_mixed.jsonl is also the input 'pool' (pool_mixed.jsonl)"),
    (["generate", "generate_out_is_data.yaml"],
     "generate_out_is_data.yaml: config key 'out': outputs_mixed.jsonl is also the input 'data'"),
    (["generate", "generate_out_is_data.yaml", "out=generate_out_is_data.yaml"],
     "generate_out_is_data.yaml: config key 'out': generate_out_is_data.yaml is also the config file"),
    (["embed", "embed_out_is_matrix.yaml"],
     "embed_out_is_matrix.yaml: config key 'out': emb.npy would be written twice, as out and as out (its matrix)"),
    (["embed", "embed_mixed.yaml", "out=linked.jsonl"], "embed_mixed.yaml: config key 'out': linked.jsonl is also the input 'pool' (pool_mixed.jsonl)"),
    (["embed", "embed_mixed.yaml", "out=run/pool.jsonl"], "embed_mixed.yaml: config key 'out': run/pool.jsonl is inside the training run "),
    (["score", "--task", "gsm8k", "outputs_mixed.jsonl", "--out", "./outputs_mixed.jsonl"],
     "--out: outputs_mixed.jsonl is also the input 'FILE'"),
    (["score", "--task", "gsm8k", "pool_empty.jsonl"], "pool_empty.jsonl: nothing to score: it is empty"),
    (["filter", "filter_empty_section.yaml"],
     "filter_empty_section.yaml: the 'filter:' section is empty; it needs the filter keys"),
    (["filter", "pipeline_misspelled_section.yaml"], "pipeline_misspelled_section.yaml: a pipeline YAML has the "
                                                     "sections generate, filter, embed; 'filtr:' is none of them "
                                                     "(did you mean 'filter'?)"),
    (["generate", "filter_empty_section.yaml"], "filter_empty_section.yaml: this pipeline YAML has no 'generate:' "
                                                "section (it has embed, filter)"),
    (["generate", "generate_scripted_gsm8k.yaml", "task=gsm9k"], "generate_scripted_gsm8k.yaml: config key 'task': "
                                                                 "unknown task 'gsm9k'; known tasks: "),
    (["generate", "generate_no_styles.yaml"], "generate_no_styles.yaml: config key 'styles': an empty list names no style"),
    (["generate", "generate_scripted_gsm8k.yaml"], "generate_scripted_gsm8k.yaml: config key 'teacher.backend': the "
                                                   "scripted stand-in teacher writes paths for the synthetic task only"),
    (["embed", "embed_mixed.yaml", "pool=loop_a"], "embed_mixed.yaml: loop_a: a symlink loop"),
    (["score", "--task", "gsm8k", "loop_a"], "loop_a: a symlink loop"),
    (["data", "export", "gsm8k", "--out", "x.jsonl", "--limit", "-1"], "--limit -1: give a count of records >= 1"),
    (["data", "export", "gsm8k", "--from-file", "export_bad_line.jsonl", "--out", "x.jsonl"],
     "export_bad_line.jsonl:2: not valid JSON"),
    (["generate", "generate_empty_question.yaml"], "questions_empty.jsonl:2: gsm8k record: the question is empty"),
])
def test_an_output_never_overwrites_an_input_and_a_refusal_writes_nothing(inputs, monkeypatch, capsys, args, needle):
    (inputs / "linked.jsonl").symlink_to(inputs / "pool_mixed.jsonl")  # the pool by another name
    (inputs / "loop_a").symlink_to("loop_b")
    (inputs / "loop_b").symlink_to("loop_a")
    (inputs / "run" / "checkpoints" / "step_000001").mkdir(parents=True)  # a training run
    (inputs / "run" / "checkpoints" / "latest").write_text("step_000001")
    (inputs / "run" / "config.yaml").write_text("{}")
    before = snapshot(inputs)
    monkeypatch.chdir(inputs)
    monkeypatch.delenv("QR_DS_TRACEBACK", raising=False)
    status = main(args)
    assert_refused(status, capsys.readouterr().err, f"qr-ds {args[0]}: error: {needle}")
    assert status == 2 and snapshot(inputs) == before
