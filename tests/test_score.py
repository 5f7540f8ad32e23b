"""Scoring model outputs: rows, accuracy with a Wilson interval, and the `qr-ds score` command."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qr_ds.tasks.score import score_records, wilson_interval

ROOT = Path(__file__).resolve().parents[1]
GSM = [json.loads(line) for line in (ROOT / "data/samples/gsm8k.jsonl").read_text().splitlines()[:5]]


def _gold(rec: dict) -> str:
    return rec["answer"].rsplit("####", 1)[1].strip()


def _outputs() -> list[dict]:
    recs = [dict(r) for r in GSM]
    recs[0]["output"] = f"Step by step... So the answer is {_gold(recs[0])}."
    recs[1]["output"] = f"**Answer:** {_gold(recs[1])}"
    recs[2]["output"] = f"```python\nprint(x)\n```\nOutput: {_gold(recs[2])}.0"
    recs[3]["output"] = f"The answer is {int(_gold(recs[3])) + 7}."
    recs[4]["output"] = "I could not work this out, though 12 and 40 are involved."
    return recs


def test_wilson_interval() -> None:
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_score_records_release_format() -> None:
    rows, summary = score_records("gsm8k", _outputs())
    assert [r["correct"] for r in rows] == [True, True, True, False, False]
    assert rows[4]["extracted"] is None and rows[3]["extracted"] == str(int(_gold(GSM[3])) + 7)
    assert rows[0]["gold"] == _gold(GSM[0]) and rows[0]["question"] == GSM[0]["question"]
    assert summary["n"] == 5 and summary["correct"] == 3 and summary["accuracy"] == pytest.approx(0.6)
    assert summary["ci95"] == pytest.approx(list(wilson_interval(3, 5))) and summary["no_answer"] == 1


def test_score_records_normalized_fields() -> None:
    rec = {"id": "q1", "question": "Pick one.\nAnswer Choices: (A) red (B) blue", "gold": "B",
           "choices": [["A", "red"], ["B", "blue"]]}
    rows, summary = score_records("arc_challenge", [rec | {"output": "The answer is blue."},
                                                    rec | {"output": "The answer is (A)."}])
    assert [r["extracted"] for r in rows] == ["B", "A"] and summary["correct"] == 1


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qr_ds", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_score_command(tmp_path: Path) -> None:
    src = tmp_path / "outputs.jsonl"
    lines = [json.dumps(r) for r in _outputs()]
    lines.insert(2, json.dumps({"question": "no output here", "answer": "#### 3"}))  # line 3: field 'output'
    lines.append("{truncated")  # line 7: not JSON
    src.write_text("\n".join(lines) + "\n")
    res = _cli("score", "--task", "gsm8k", str(src))
    assert res.returncode == 0, res.stderr
    assert "gsm8k: accuracy 60.00% (3/5), 95% CI [23.07%, 88.24%]" in res.stdout
    out = tmp_path / "outputs.scored.jsonl"
    assert f"wrote {out}" in res.stdout and "rejected 2 malformed line(s)" in res.stdout
    assert f"{src}:3: field 'output'" in res.stderr and f"{src}:7: not valid JSON" in res.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["correct"] for r in rows] == [True, True, True, False, False]
    quarantined = [json.loads(line) for line in (tmp_path / "outputs.jsonl.quarantine.jsonl").read_text().splitlines()]
    assert [q["line"] for q in quarantined] == [3, 7]


def test_score_command_out_and_errors(tmp_path: Path) -> None:
    src = tmp_path / "o.jsonl"
    src.write_text(json.dumps(_outputs()[0]) + "\n")
    res = _cli("score", "--task", "gsm8k", str(src), "--out", str(tmp_path / "x" / "rows.jsonl"))
    assert res.returncode == 0 and (tmp_path / "x" / "rows.jsonl").is_file()
    assert "accuracy 100.00% (1/1)" in res.stdout
    res = _cli("score", "--task", "mmlu", str(src))
    assert res.returncode == 2 and "unknown task 'mmlu'" in res.stderr
    res = _cli("tasks")
    assert res.returncode == 0 and "date_understanding" in res.stdout and "nli_label" in res.stdout


def test_score_teacher_dump_against_reference_verdicts(tmp_path: Path) -> None:
    """A teacher dump keeps the output in 'response' and a reference verdict per record: the command
    scores that field and reports how often its verdicts agree with the reference."""
    fixture = ROOT / "tests" / "fixtures" / "teacher_outputs" / "strategyqa.jsonl"
    records = [json.loads(line) for line in fixture.read_text().splitlines()[:6]]
    records[0]["ref_correct"] = not records[0]["ref_correct"]  # one reference we must disagree with
    src = tmp_path / "dump.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    res = _cli("score", "--task", "strategyqa", "--field", "response", str(src))
    assert res.returncode == 0, res.stderr
    assert "verdicts agree with the records' ref_correct on 83.33%" in res.stdout
    res = _cli("score", "--task", "strategyqa", str(src))
    assert "field 'output'" in res.stderr
