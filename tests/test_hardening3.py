"""Hardening round 3 (issue 35): four classes of bad input, each built here and run through the real
`qr-ds` process, as a user would meet it.

1. a name read from a file (checkpoints/latest, a student folder of meta.json, a pool's matrix) that
   resolves outside the folder owning it;
2. bad numbers (NaN rows, a 1-d matrix, an empty question): refused or set aside, by file:line;
3. the report: what it leaves out is named on stderr with the real reason, --strict makes it fail;
4. one convention for bad input: one line naming the file or key, exit 2, no traceback.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from qr_ds.data.pool import write_pool
from qr_ds.run_layout import RunDir
from qr_ds.tasks import write_synthetic
from qr_ds.testing.builders import make_pool, synthetic_records
from test_bad_inputs import TRACEBACK, qr_ds
from test_report import make_run

pytestmark = pytest.mark.slow  # a dozen real qr-ds processes


def error_line(res, command: str) -> str:
    """The command's one error line, checked: last on stderr, no traceback."""
    assert TRACEBACK not in res.stderr, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"qr-ds {command}: error: "), res.stderr
    return last


def checkpoint(folder: Path, students: list[str]) -> Path:
    """A checkpoint as meta.json describes it (LoRA students); adapters are named, never loaded."""
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"step": 9, "students": [{"name": s, "model": "m"} for s in students]}))
    return folder


def adapter(folder: Path) -> None:
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))


@pytest.fixture
def routed_run(tmp_path):
    """A run with a router over an embedded pool of 24 paths: what `qr-ds report` routes."""
    pool = make_pool(tmp_path / "pool", n_questions=4, emb_dim=16)
    return make_run(tmp_path / "run", pool, seed=0, steps=4, offset=0.5), pool


def report(cwd: Path, run: Path, *extra: str):
    return qr_ds(cwd, "report", str(run), "--out", str(cwd / "out"), *extra)


def routing_md(cwd: Path) -> str:
    md = (cwd / "out" / "report.md").read_text()
    return md[md.index("## Routing"):md.index("## Throughput")]


# ---- 1. names read from files stay in their folder ----

def latest_links_out(tmp: Path) -> tuple[list[str], str]:
    """checkpoints/latest names step_000009, a plain name, but the folder is a link out of the run."""
    outside = checkpoint(tmp / "outside" / "step_000009", ["a"])
    adapter(outside / "students" / "a")
    (tmp / "run" / "checkpoints").mkdir(parents=True)
    (tmp / "run" / "checkpoints" / "step_000009").symlink_to(outside)
    (tmp / "run" / "checkpoints" / "latest").write_text("step_000009")
    return ["eval", "--run", str(tmp / "run")], f"{tmp / 'run' / 'checkpoints' / 'latest'}: names 'step_000009'"


def student_links_out(tmp: Path) -> tuple[list[str], str]:
    """meta.json lists student 'a'; students/a is a link to another checkpoint's student."""
    ckpt = checkpoint(tmp / "run" / "checkpoints" / "step_000009", ["a"])
    adapter(tmp / "outside" / "a")
    (ckpt / "students").mkdir()
    (ckpt / "students" / "a").symlink_to(tmp / "outside" / "a")
    return ["eval", "--checkpoint", str(ckpt)], f"{ckpt / 'meta.json'}: names 'a'"


@pytest.mark.parametrize("build", [latest_links_out, student_links_out])
def test_a_checkpoint_name_that_links_out_of_its_folder_is_refused(tmp_path, build):
    write_synthetic(tmp_path / "q.jsonl", 2, seed=0)
    args, needle = build(tmp_path)
    res = qr_ds(tmp_path, *args, "--task", "synthetic=q.jsonl", "--backend", "hf", "--out", "o")
    assert res.returncode == 2 and needle in error_line(res, "eval") and "outside" in res.stderr
    assert not (tmp_path / "o").exists()


def test_a_pool_matrix_that_links_out_of_the_pool_folder_is_not_read(tmp_path, routed_run):
    run, pool = routed_run
    (tmp_path / "elsewhere").mkdir()
    (pool.parent / "emb.npy").rename(tmp_path / "elsewhere" / "emb.npy")
    (pool.parent / "emb.npy").symlink_to(tmp_path / "elsewhere" / "emb.npy")  # the record's name is plain
    res = report(tmp_path, run, "--strict")
    assert res.returncode == 1 and TRACEBACK not in res.stderr
    assert f"{pool}:1: record 'synthetic-0-0/vanilla/0': embedding file 'emb.npy' resolves to" in res.stderr
    assert "outside the pool's folder" in routing_md(tmp_path)


# ---- 2. values, not only shapes ----

@pytest.mark.parametrize("damage,needle", [
    (lambda m: np.where(np.arange(len(m))[:, None] % 5 == 3, np.nan, m), "pool.jsonl:4: record "
     "'synthetic-0-0/program/0': its embedding (emb.npy row 3) is not finite (NaN or inf)"),
    (lambda m: m.astype(np.float64) * 1e300, "is not finite"),  # overflows float32 when read
    (lambda m: m[:, 0].copy(), "expected a 2-d matrix, got shape (24,)"),
    (lambda m: (m * 100).astype(np.int64), "expected floating-point numbers, got dtype int64"),
])
def test_embeddings_that_are_not_finite_vectors_are_not_routed(tmp_path, routed_run, damage, needle):
    run, pool = routed_run
    np.save(pool.parent / "emb.npy", damage(np.load(pool.parent / "emb.npy")))
    res = report(tmp_path, run, "--strict")
    assert res.returncode == 1 and TRACEBACK not in res.stderr
    assert needle in res.stderr and needle in routing_md(tmp_path)
    assert "routing_style_run.png" not in (tmp_path / "out" / "report.md").read_text()  # nothing plotted


def test_a_finite_row_whose_sum_overflows_is_kept_and_each_bad_row_counted():
    """The check sums rows to find candidates: a sum's overflow alone must not refuse a row."""
    from qr_ds.data.pool import EmbeddingRef
    from qr_ds.embed.lookup import EmbeddingError, refuse_non_finite

    records = synthetic_records(1)
    for k, r in enumerate(records):
        r.embedding = EmbeddingRef("emb.npy", k)
    rows = np.ones((6, 4), np.float32)
    rows[2, :2] = 3e38  # finite values, an infinite float32 sum
    refuse_non_finite(Path("pool.jsonl"), records, {}, rows)
    rows[4, 0], rows[5, 3] = np.nan, -np.inf
    with pytest.raises(EmbeddingError, match=r"pool.jsonl:5: record '.*': its embedding \(emb.npy row 4\) is not "
                                             r"finite \(NaN or inf\), and 1 more of the 6 read"):
        refuse_non_finite(Path("pool.jsonl"), records, {r.id: k + 1 for k, r in enumerate(records)}, rows)


def test_a_record_with_an_empty_question_is_set_aside_by_file_line(tmp_path):
    records = synthetic_records(1)
    records[1].question = " \t"
    write_pool(tmp_path / "pool.jsonl", records)
    (tmp_path / "f.yaml").write_text(yaml.safe_dump({"pool": "pool.jsonl", "out": "kept.jsonl"}))
    res = qr_ds(tmp_path, "filter", "f.yaml", "--no-judge", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "pool.jsonl: accepted 5, rejected 1" in res.stderr
    assert "pool.jsonl:2: field 'question': must not be empty" in res.stderr
    kept = [json.loads(line)["id"] for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert records[1].id not in kept and len(kept) == 5


# ---- 3. the report says what it left out, and why ----

def cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


@pytest.mark.parametrize("damage,needle,strict", [
    (lambda p: p.write_bytes(b""), "emb.npy is empty or cut short", False),
    (cut_short, "emb.npy is not a .npy matrix", True),
    (lambda p: np.save(p, np.array([None] * 24, dtype=object)), "Python objects in dtype", True),
])
def test_the_report_names_what_it_left_out_with_the_real_reason(tmp_path, routed_run, damage, needle, strict):
    run, pool = routed_run
    damage(pool.parent / "emb.npy")
    res = report(tmp_path, run, *["--strict"] * strict)
    assert TRACEBACK not in res.stderr
    if strict:
        assert res.returncode == 1 and res.stderr.strip().splitlines()[-1].startswith(
            "qr-ds report: failed: --strict: 1 thing(s) left out of ")
    else:
        assert res.returncode == 0  # a partial report is still a report
    said = [line for line in res.stderr.splitlines() if line.startswith("report: left out: ")]
    assert len(said) == 1 and said[0].startswith("report: left out: routing of run: EmbeddingError: ") and needle in said[0]
    section = routing_md(tmp_path)  # written either way
    assert needle in section and "No router" not in section and "No run has a router" not in section
    assert json.loads((tmp_path / "out" / "report.json").read_text())["skipped"] == [said[0].split("left out: ", 1)[1]]


def test_a_complete_report_passes_strict_and_names_sections_not_asked_for(tmp_path, routed_run):
    res = report(tmp_path, routed_run[0], "--strict")
    assert res.returncode == 0 and "left out" not in res.stderr, res.stderr
    assert "report: no accuracy section: no --eval given" in res.stderr


# ---- 4. bad input: one line naming the file or key, exit 2 ----

def config_is_a_folder(tmp: Path) -> tuple[list[str], str]:
    (tmp / "cfg").mkdir()
    return ["generate", "cfg"], "cfg: is a folder, not a config file"


def pool_is_a_folder(tmp: Path) -> tuple[list[str], str]:
    (tmp / "pool").mkdir()
    (tmp / "f.yaml").write_text(yaml.safe_dump({"filter": {"pool": "pool", "out": "o.jsonl", "judge": {"backend": "none"}}}))
    return ["filter", "f.yaml"], "f.yaml: config key 'pool': pool is a folder; it needs a file"


def data_file_is_a_folder(tmp: Path) -> tuple[list[str], str]:
    (tmp / "outputs.jsonl").mkdir()
    return ["score", "--task", "gsm8k", "outputs.jsonl"], "outputs.jsonl: is a folder, not a file"


def dead_teacher_port(tmp: Path) -> tuple[list[str], str]:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    write_synthetic(tmp / "q.jsonl", 2, seed=0)
    (tmp / "g.yaml").write_text(yaml.safe_dump({"task": "synthetic", "data": "q.jsonl", "out": "p.jsonl",
                                                "teacher": {"backend": "openai", "model": "m", "base_url": url}}))
    return ["generate", "g.yaml", "--no-progress"], "g.yaml: config key 'teacher.base_url': cannot connect to"


def task_name_is_a_path(tmp: Path) -> tuple[list[str], str]:
    (tmp / "o.jsonl").write_text('{"id": "q1", "output": "4"}\n')
    return ["score", "--task", "../../etc/passwd", "o.jsonl"], "unknown task '../../etc/passwd'"


def half_written_metrics(tmp: Path) -> tuple[list[str], str]:
    run = make_run(tmp / "run", make_pool(tmp / "pool", n_questions=1), seed=0, steps=2, offset=0.5)
    RunDir(run).metrics.write_text('{"step": 1, "sft_loss/llama": 0.')  # killed in its first write
    return ["report", "run", "--out", "out"], "run/metrics.jsonl: no readable row (run/metrics.jsonl:1: not valid JSON"


def pickled_full_weights(tmp: Path) -> tuple[list[str], str]:
    ckpt = checkpoint(tmp / "ckpt", [])
    (ckpt / "meta.json").write_text(json.dumps({"step": 9, "students": [{"name": "c", "model": "m", "finetune": "full"}]}))
    (ckpt / "students" / "c" / "model").mkdir(parents=True)
    (ckpt / "students" / "c" / "model" / "config.json").write_text("{}")
    (ckpt / "students" / "c" / "model" / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")  # a pickle
    write_synthetic(tmp / "q.jsonl", 2, seed=0)
    return (["eval", "--checkpoint", "ckpt", "--task", "synthetic=q.jsonl", "--backend", "hf"],
            "ckpt/students/c/model/pytorch_model.bin: a pickled weights file")


def unknown_task_in_the_pool(tmp: Path) -> tuple[list[str], str]:
    records = synthetic_records(1)
    records[2].task = "no_such_task"
    write_pool(tmp / "pool.jsonl", records)
    (tmp / "f.yaml").write_text(yaml.safe_dump({"pool": "pool.jsonl", "out": "kept.jsonl"}))
    return ["filter", "f.yaml", "--no-judge"], f"pool.jsonl:3: record '{records[2].id}': unknown task 'no_such_task'"


@pytest.mark.parametrize("build", [config_is_a_folder, pool_is_a_folder, data_file_is_a_folder, dead_teacher_port,
                                   task_name_is_a_path, half_written_metrics, pickled_full_weights,
                                   unknown_task_in_the_pool])
def test_bad_input_is_one_line_naming_its_file_or_key_and_exit_2(tmp_path, build):
    args, needle = build(tmp_path)
    res = qr_ds(tmp_path, *args)
    assert res.returncode == 2 and needle in error_line(res, args[0])


def test_a_resume_reads_past_a_half_written_metrics_row_and_a_bad_middle_line_is_named(tmp_path):
    """train --resume cuts metrics.jsonl back to its checkpoint; half a row (a kill) stopped it."""
    from qr_ds.data.jsonl import iter_jsonl
    from qr_ds.train.metrics import truncate_jsonl

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "sft')
    truncate_jsonl(log, after_step=2)
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n'
    log.write_text('{"step": 1}\n{"step": \n{"step": 3}\n')
    with pytest.raises(ValueError, match=rf"{log}:2: not valid JSON"):
        list(iter_jsonl(log))


def test_a_pickled_router_is_left_out_naming_the_file(tmp_path, routed_run):
    state = RunDir(routed_run[0]).require_latest().component("router")
    state.write_bytes(b"\x80\x04\x95\x0c\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x8c\x06getcwd\x93)R.")  # os.getcwd()
    res = report(tmp_path, routed_run[0], "--strict")
    assert res.returncode == 1 and TRACEBACK not in res.stderr
    assert f"routing of run: ValueError: {state}: refused: not a weights-only state file" in res.stderr
