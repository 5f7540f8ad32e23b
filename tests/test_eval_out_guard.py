"""`qr-ds eval` never replaces an earlier evaluation's results: refused before a model loads, or with
--overwrite moved aside (OUT.replaced-TIME), never deleted."""
import json

import pytest

from evalkit import build_base, build_run, write_task_data
from qr_ds.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalguard")
    run = build_run(root / "run", {"a": build_base(root / "base")}, steps=[10, 20])
    return run, write_task_data(root / "syn.jsonl", n=2)


def evaluate(run_dir, data, out, *extra):
    return main(["eval", "--run", str(run_dir), "--task", f"synthetic={data}", "--backend", "hf", "--limit", "1",
                 "--max-new-tokens", "2", "--no-zero-shot", "--out", str(out), *extra])


def files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_second_evaluation_into_the_same_folder_is_refused_before_a_model_loads(run, tmp_path, monkeypatch,
                                                                                  capsys):
    run_dir, data = run
    out = tmp_path / "out"
    out.mkdir()
    (out / "eval.log").write_text("log\n")  # what the trainer's background evaluator puts there first
    assert evaluate(run_dir, data, out, "--all-checkpoints") == 0
    first = files(out)
    assert {"eval.log", "predictions.jsonl", "summary.json"} <= first.keys()
    capsys.readouterr()

    loaded = []
    monkeypatch.setattr("qr_ds.eval.run.make_backend", lambda *a, **k: loaded.append("backend"))
    assert evaluate(run_dir, data, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and loaded == []
    assert err.startswith(f"qr-ds eval: error: --out: {out} already holds an evaluation of ")  # as it was set
    for step in ("step_000010", "step_000020"):  # what it evaluated, read from its summary.json
        assert str(run_dir / "checkpoints" / step) in err
    assert "another --out" in err and "--overwrite" in err
    assert files(out) == first and not list(tmp_path.glob("out.replaced-*"))
    config = tmp_path / "eval.yaml"  # out from a config file: that file's key is named
    config.write_text(json.dumps({"out": str(out)}))
    assert main(["eval", "--config", str(config), "--run", str(run_dir), "--task", f"synthetic={data}",
                 "--backend", "hf", "--limit", "1", "--no-zero-shot"]) == 2
    assert capsys.readouterr().err.startswith(f"qr-ds eval: error: {config}: config key 'out': {out} already holds")


def test_predictions_without_a_summary_are_results_too(run, tmp_path, capsys):
    run_dir, data = run
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.jsonl").write_text('{"checkpoint": "step_000010"}\n')
    (out / "summary.json").write_text("{not json")  # cut off by a full disk
    assert evaluate(run_dir, data, out) == 2
    assert "(no readable summary.json); pass another --out, or --overwrite" in capsys.readouterr().err
    assert (out / "predictions.jsonl").read_text() == '{"checkpoint": "step_000010"}\n'


def test_overwrite_moves_the_old_evaluation_aside_and_writes_the_new(run, tmp_path, capsys):
    run_dir, data = run
    out = tmp_path / "out"
    assert main(["eval", "--checkpoint", str(run_dir / "checkpoints/step_000010"), "--task", f"synthetic={data}",
                 "--backend", "hf", "--limit", "1", "--max-new-tokens", "2", "--no-zero-shot",
                 "--out", str(out)]) == 0
    first = files(out)
    assert evaluate(run_dir, data, out, "--overwrite") == 0
    (aside,) = tmp_path.glob("out.replaced-*")
    assert f"{out} to {aside}" in capsys.readouterr().err  # says where the old results went
    assert files(aside) == first
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checkpoints"] == [str(run_dir / "checkpoints/step_000020")]
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert {p["checkpoint"] for p in preds} == {"step_000020"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", aside.name]  # the lock is gone


def test_an_evaluation_into_a_folder_another_one_is_writing_is_refused(run, tmp_path, capsys):
    """Both would find it empty at the start; the later to finish would replace the other's results."""
    from qr_ds.stages import output_lock

    run_dir, data = run
    out = tmp_path / "out"
    with output_lock(out.absolute()):  # as a running `qr-ds eval --out out` holds it
        assert evaluate(run_dir, data, out) == 1
    assert f"{tmp_path / 'out.lock'} is held" in capsys.readouterr().err
    assert not out.exists()


def test_overwrite_never_moves_an_input_aside_with_the_old_results(run, tmp_path, capsys):
    """--out runs --overwrite, where runs/ holds an earlier evaluation, once moved every run with it."""
    run_dir, data = run
    (run_dir.parent / "summary.json").write_text("[]")  # an earlier evaluation, its summary not an object
    try:
        assert evaluate(run_dir, data, run_dir.parent, "--overwrite") == 2
        err = capsys.readouterr().err
        assert f"--overwrite would move {run_dir.parent} aside and with it the run, checkpoint step_000020 of a" in err
        assert run_dir.is_dir() and not list(run_dir.parent.parent.glob("*.replaced-*"))
        assert evaluate(run_dir, data, run_dir.parent) == 2  # no --overwrite: named as results, not a crash
        assert "(no readable summary.json)" in capsys.readouterr().err
    finally:
        (run_dir.parent / "summary.json").unlink()
