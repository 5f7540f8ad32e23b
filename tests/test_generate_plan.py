"""`qr-ds generate --plan` prints what a run would spend and asks nothing; paths already generated are
not counted again, and their measured length replaces the max_tokens bound."""
from pathlib import Path

from qr_ds.cli import main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pipeline-synthetic-scripted.yaml"


def test_plan_counts_calls_and_tokens_and_asks_nothing(tmp_path, capsys):
    from qr_ds.tasks import write_synthetic

    write_synthetic(str(tmp_path / "data.jsonl"), 10, 0)
    args = ["generate", str(CONFIG), f"data={tmp_path / 'data.jsonl'}", f"out={tmp_path / 'pool.jsonl'}"]
    assert main([*args, "teacher.sampling.max_tokens=100", "--plan"]) == 0
    out = capsys.readouterr().out
    assert "10 questions x 6 styles x 2 samples = 120 paths; 0 already done" in out
    assert "teacher calls: 120 (scripted" in out and "tokens out: ~12,000 (100 a path: sampling.max_tokens" in out
    assert "the scripted stand-in asks no endpoint" in out  # the estimates are not what it costs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl"]  # nothing asked, nothing written

    assert main([*args, "limit=4", "--no-progress"]) == 0
    capsys.readouterr()
    assert main([*args, "--plan"]) == 0
    out = capsys.readouterr().out
    assert "120 paths; 48 already done" in out and "teacher calls: 72 (" in out
    assert "a path: the mean of 48 paths already generated" in out
