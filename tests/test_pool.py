import errno
import json

import pytest

from qr_ds.data.pool import SCHEMA, load_pool


def _rec(i, **over):
    r = {"id": f"q{i}/cot/0", "task": "gsm8k", "question_id": f"q{i}", "question": "1+1?", "gold": "2",
         "teacher": "t", "style": "cot", "sample": 0, "prompt": "p", "response": "The answer is 2.",
         "schema": SCHEMA}
    r.update(over)
    return json.dumps(r)


def test_broken_lines_are_quarantined_with_line_numbers(tmp_path):
    path = tmp_path / "pool.jsonl"
    lines = [
        _rec(0),
        "{not json",
        _rec(2, sample=-1),
        "",
        _rec(4, judge={"verdict": "MAYBE"}),
        _rec(5, extra_field=1),
        json.dumps([1, 2]),
        _rec(7, response=None),
        _rec(8, correct=True, judge={"verdict": "VALID", "reason": "ok"}, embedding={"file": "e.npy", "row": 3}),
        _rec(9, schema="qr_ds.path/0"),
    ]
    path.write_text("\n".join(lines) + "\n")
    said = []
    rep = load_pool(path, log=said.append)
    assert [r.id for r in rep.records] == ["q0/cot/0", "q8/cot/0"]
    assert rep.records[1].judge.verdict == "VALID" and rep.records[1].embedding.row == 3
    assert [n for n, _ in rep.rejected] == [2, 3, 5, 6, 7, 8, 10]
    reasons = dict(rep.rejected)
    assert "not valid JSON" in reasons[2]
    assert "field 'sample'" in reasons[3]
    assert "field 'judge'" in reasons[5]
    assert "field 'extra_field'" in reasons[6]
    assert "field 'response'" in reasons[8]
    assert "field 'schema'" in reasons[10]
    q = [json.loads(l) for l in rep.quarantine.read_text().splitlines()]
    assert [e["line"] for e in q] == [2, 3, 5, 6, 7, 8, 10] and q[0]["raw"] == "{not json"
    assert said[0].endswith("accepted 2, rejected 7 (quarantined to " + str(rep.quarantine) + ")")
    assert f"{path}:2: not valid JSON" in said[1]


def test_clean_file_has_no_quarantine(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text(_rec(0) + "\n")
    rep = load_pool(path, log=lambda m: None)
    assert len(rep.records) == 1 and rep.quarantine is None
    assert not (tmp_path / "pool.jsonl.quarantine.jsonl").exists()


def test_undecodable_bytes_are_quarantined_not_fatal(tmp_path):
    path = tmp_path / "pool.jsonl"
    bad = _rec(1, response="cafX").encode().replace(b"cafX", b"caf\xff")
    path.write_bytes(_rec(0).encode() + b"\n" + bad + b"\n" + _rec(2).encode() + b"\n")
    said = []
    rep = load_pool(path, log=said.append)
    assert [r.id for r in rep.records] == ["q0/cot/0", "q2/cot/0"] and rep.lines == [1, 3]
    (lineno, reason), = rep.rejected
    assert lineno == 2 and reason.startswith("not UTF-8 (byte 0xff at byte ")
    assert f"{path}:2: not UTF-8" in said[1]
    (q,) = [json.loads(l) for l in rep.quarantine.read_text().split("\n") if l]
    assert q["line"] == 2 and "caf\\xff" in q["raw"]


def test_line_separators_inside_strings_and_crlf_endings(tmp_path):
    path = tmp_path / "pool.jsonl"
    texts = ["one\u2028two", "three\u2029four", "five\x85six", "seven\x1cx"]
    lines = [json.dumps({**json.loads(_rec(i)), "response": t}, ensure_ascii=False) for i, t in enumerate(texts)]
    path.write_bytes("\r\n".join(lines).encode() + b"\r\n")
    rep = load_pool(path, log=lambda m: None)
    assert [r.response for r in rep.records] == texts and rep.rejected == [] and rep.lines == [1, 2, 3, 4]


def test_a_full_disk_names_the_file():
    from qr_ds.data.jsonl import JsonlAppender

    with pytest.raises(OSError) as e:
        with JsonlAppender("/dev/full", fsync=False) as out:
            out.write({"a": 1})
    assert e.value.errno == errno.ENOSPC and e.value.filename == "/dev/full"


@pytest.mark.parametrize("embedding,needle", [
    ({"file": "/etc/passwd", "row": 0}, "field 'embedding.file': '/etc/passwd' must be relative to the pool's folder"),
    ({"file": "../other/emb.npy", "row": 0}, "field 'embedding.file': '../other/emb.npy' must be relative"),
    ({"file": "emb.npy", "row": True}, "field 'embedding.row': expected an integer >= 0, got True"),
    ({"file": "emb.npy", "row": -1}, "field 'embedding.row': expected an integer >= 0, got -1"),
    ({"file": "emb.npy", "row": 0, "text_hash": 5}, "field 'embedding.text_hash': expected a string"),
    ({"file": "emb.npy", "row": 0, "rows": 1}, "field 'embedding.rows': unknown field"),
    ({"file": "", "row": 0}, "field 'embedding.file': expected a file name"),
])
def test_embedding_refs_stay_in_the_pool_folder_and_rows_are_ints(tmp_path, embedding, needle):
    path = tmp_path / "pool.jsonl"
    path.write_text(_rec(0) + "\n" + _rec(1, embedding=embedding) + "\n")
    rep = load_pool(path, log=lambda m: None)
    assert [r.id for r in rep.records] == ["q0/cot/0"]
    assert rep.rejected == [(2, needle + rep.rejected[0][1][len(needle):])]


@pytest.mark.parametrize("content, kept", [(b'{"a": 1}\n{"b"', b'{"a": 1}\n'), (b'{"a": 1}\n', b'{"a": 1}\n'),
                                           (b'{"a"', b""), (b"x\n" + b"y" * 5000, b"x\n"), (b"", b"")])
def test_repair_tail_drops_only_a_half_written_last_line(tmp_path, content, kept):
    """Read back from the end in blocks (a small one here, so the newline lies several blocks back)."""
    from qr_ds.data.jsonl import repair_tail

    path = tmp_path / "log.jsonl"
    path.write_bytes(content)
    repair_tail(path, block=64)
    assert path.read_bytes() == kept


def test_to_json_is_what_asdict_gives_for_a_full_record():
    import dataclasses

    from qr_ds.data.pool import EmbeddingRef, JudgeVerdict, PathRecord

    rec = PathRecord(id="q1/cot/0", task="gsm8k", question_id="q1", question="What is 2+2?", gold="4", teacher="t",
                     style="cot", sample=0, prompt="p", response="r", error=None, sampling={"seed": 3}, level=2,
                     answer="4", correct=True, judge=JudgeVerdict("VALID", "fine", "m"),
                     embedding=EmbeddingRef("e.npy", 3, "ab" * 12), meta={"tokens_in": 5, "tries": [1, 2]})
    assert rec.to_json() == dataclasses.asdict(rec)
