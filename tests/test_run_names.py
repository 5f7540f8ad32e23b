"""One owner of the run folder's names: qr_ds/run_layout.py spells them, everyone else asks RunDir."""
import re
from pathlib import Path

from qr_ds.run_layout import RunDir
from qr_ds.stages import training_run_of

ROOT = Path(__file__).resolve().parents[1]
# a path built by joining one of the run folder's names: `x / "checkpoints"`
JOINED = re.compile(r'/\s*"(checkpoints|config\.yaml|latest|prepared|metrics\.jsonl|eval\.jsonl|ranks|tb|engines|rng'
                    r'|meta\.json|position\.json|mutual_head\.pt)"')


def test_no_module_but_run_layout_spells_a_run_folder_name():  # tests may: they check the layout
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
             for folder in ("qr_ds", "launch", "benchmarks") for p in sorted((ROOT / folder).rglob("*.py"))
             if p.name != "run_layout.py"
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if JOINED.search(line)]
    assert found == []


def test_training_builds_its_run_dir_in_one_place_and_passes_it():  # TrainConfig.run; eval and report open
    # a folder the user names, so they may build one
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
             for p in sorted((ROOT / "qr_ds" / "train").glob("*.py")) + sorted((ROOT / "launch").glob("*.py"))
             if p.name != "config.py"
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if "RunDir(" in line]
    assert found == []


def test_a_run_folder_is_known_by_its_checkpoints_and_config_or_latest(tmp_path):
    run = RunDir(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    assert not run.is_run() and training_run_of(run.checkpoints / "step_000001") is None  # a bare checkpoints/
    run.set_latest(run.checkpoint(1))
    assert run.latest_marker.read_text() == "step_000001" and run.is_run()
    assert training_run_of(run.checkpoints / "step_000001" / "x") == run.root.resolve()
    run.latest_marker.unlink()
    run.config.write_text("students: []\n")
    assert run.is_run()
