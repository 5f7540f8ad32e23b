"""qr-ds embed with the offline all-MiniLM-L6-v2: shape, cache reuse, mmap, record -> row."""
import re

import numpy as np
import pytest

from qr_ds.config import from_dict
from qr_ds.data.pool import PathRecord, load_pool, write_pool
from qr_ds.embed.config import EmbedConfig
from qr_ds.embed.encoder import Encoder
from qr_ds.embed.lookup import EmbeddingError, gather_embeddings, load_matrix, text_hash
from qr_ds.embed.run import run_embed

TEXTS = ["3 + 4 = 7. The answer is 7.", "x1 = 10 - 2  # = 8\nprint(8)", "3 + 4 = 7. The answer is 7.",
         "Recall the facts: 2 * 6 = 12. The answer is 12."]


@pytest.fixture(scope="module")
def encoder():
    return Encoder("default")


def pool(path, texts):
    recs = [PathRecord(id=f"q{i}/cot/0", task="synthetic", question_id=f"q{i}", question="?", gold="7",
                       teacher="scripted-teacher", style="cot", sample=0, prompt="p", response=t)
            for i, t in enumerate(texts)]
    recs.append(PathRecord(id="qx/cot/0", task="synthetic", question_id="qx", question="?", gold="1",
                           teacher="scripted-teacher", style="cot", sample=0, prompt="p", error="timeout"))
    write_pool(path, recs)


def test_embed_rows_cache_and_mmap(tmp_path, encoder):
    pool(tmp_path / "pool.jsonl", TEXTS)
    cfg = from_dict(EmbedConfig, {"pool": str(tmp_path / "pool.jsonl"), "out": str(tmp_path / "out" / "emb.jsonl")})
    res = run_embed(cfg, encoder=encoder, progress=False)
    assert res.dim == 384 and res.records == 4 and res.unique_texts == 3 and encoder.calls == 3

    recs = load_pool(cfg.out).records
    assert [r.embedding.row for r in recs] == [0, 1, 0, 2]  # duplicate text shares a row; failed path skipped
    m = load_matrix(cfg.out, recs[0].embedding.file)
    assert isinstance(m, np.memmap) and m.dtype == np.float32 and m.shape == (3, 384)
    direct = encoder.encode(TEXTS, batch_size=4)
    for r, t in zip(recs, TEXTS):
        assert r.embedding.text_hash == text_hash(t)
        np.testing.assert_allclose(m[r.embedding.row], direct[TEXTS.index(t)], atol=1e-5)
    assert np.allclose(np.linalg.norm(m, axis=1), 1.0, atol=1e-4)

    # a second pool sharing two texts: only the new one is encoded; the cache survives the run
    encoder.calls = 0
    pool(tmp_path / "pool2.jsonl", [TEXTS[1], "A brand new path. The answer is 5.", TEXTS[0]])
    cfg2 = from_dict(EmbedConfig, {"pool": str(tmp_path / "pool2.jsonl"), "out": str(tmp_path / "out" / "emb2.jsonl")})
    res2 = run_embed(cfg2, encoder=encoder, progress=False)
    assert res2.encoded == 1 and encoder.calls == 1
    m2 = load_matrix(cfg2.out, "emb2.npy")
    np.testing.assert_allclose(m2[0], m[1], atol=1e-6)
    encoder.calls = 0
    assert run_embed(cfg, encoder=encoder, progress=False).encoded == 0 and encoder.calls == 0
    np.testing.assert_array_equal(gather_embeddings(cfg.out, recs), np.asarray(m)[[0, 1, 0, 2]])


def test_a_huge_path_is_cut_before_tokenizing(tmp_path, encoder, monkeypatch):
    prose = "Add 3 and 4 to get 7, then double it: 14. " * 100  # ~4300 characters, well past 256 tokens
    huge = prose * 2500  # ~10 MB: tokenizing it whole took 49 s and 3 GB
    assert len(prose) > encoder.max_chars and len(huge) > 10_000_000
    # the cut changes nothing the encoder reads: it truncates to max_seq_length tokens anyway
    np.testing.assert_allclose(encoder.encode([prose[: encoder.max_chars]], 1),
                               encoder.model.encode([prose], normalize_embeddings=True), atol=1e-5)
    pool(tmp_path / "pool.jsonl", [huge, "short. The answer is 1."])
    cfg = from_dict(EmbedConfig, {"pool": str(tmp_path / "pool.jsonl"), "out": str(tmp_path / "emb.jsonl")})
    longest = []  # the longest text the model was handed, per call: the cut, counted, not timed
    model_encode = encoder.model.encode

    def encode(texts, **kw):
        longest.append(max(map(len, texts)))
        assert longest[-1] <= encoder.max_chars, "a text reached the model uncut"  # fail before a 49 s tokenize
        return model_encode(texts, **kw)

    monkeypatch.setattr(encoder.model, "encode", encode)
    res = run_embed(cfg, encoder=encoder, progress=False)
    assert res.capped == 1 and res.records == 2 and max(longest) == encoder.max_chars
    monkeypatch.undo()
    np.testing.assert_allclose(load_matrix(cfg.out, "emb.npy")[0], encoder.encode([prose], 1)[0], atol=1e-5)


def test_an_empty_pool_is_an_error_before_the_encoder_loads(tmp_path):
    pool(tmp_path / "pool.jsonl", [])  # one record, without a response
    cfg = from_dict(EmbedConfig, {"pool": str(tmp_path / "pool.jsonl"), "out": str(tmp_path / "emb.jsonl")})
    with pytest.raises(ValueError, match=r"pool.jsonl: nothing to embed: 1 records, none with a response"):
        run_embed(cfg, encoder=None, progress=False)


def _embedded(tmp_path, encoder):
    pool(tmp_path / "pool.jsonl", TEXTS[:2])
    cfg = from_dict(EmbedConfig, {"pool": str(tmp_path / "pool.jsonl"), "out": str(tmp_path / "emb.jsonl")})
    run_embed(cfg, encoder=encoder, progress=False)
    return cfg.out, load_pool(cfg.out)


@pytest.mark.parametrize("change,needle", [
    (lambda r: setattr(r.embedding, "row", 7), r"pool:2: record 'q1/cot/0': embedding.row 7 is out of range: emb.npy has 2 rows"),
    (lambda r: setattr(r, "response", "another text"), r"pool:2: record 'q1/cot/0': embedding.text_hash '\w+' is not the hash of this response"),
    (lambda r: setattr(r.embedding, "text_hash", ""), r"pool:2: record 'q1/cot/0': embedding.text_hash '' is not the hash"),
    (lambda r: setattr(r.embedding, "file", "missing.npy"), r"pool:2: record 'q1/cot/0': embedding file .*missing.npy not found"),
    (lambda r: setattr(r, "embedding", None), r"pool:2: record 'q1/cot/0': no embedding: run `qr-ds embed`"),
])
def test_embeddings_in_use_are_checked_naming_the_line(tmp_path, encoder, change, needle):
    from qr_ds.data.pool import record_lines

    out, report = _embedded(tmp_path, encoder)
    change(report.records[1])
    with pytest.raises(EmbeddingError, match=needle.replace("pool:", re.escape(str(out)) + ":")):
        gather_embeddings(out, report.records, record_lines(report))


def test_a_symlink_cannot_lead_the_matrix_out_of_the_pool_folder(tmp_path, encoder):
    out, report = _embedded(tmp_path / "pool", encoder)
    np.save(tmp_path / "elsewhere.npy", np.zeros((2, 384), np.float32))
    (out.parent / "link.npy").symlink_to(tmp_path / "elsewhere.npy")
    for r in report.records:
        r.embedding.file = "link.npy"
    with pytest.raises(EmbeddingError, match=r"resolves to .*elsewhere.npy, outside the pool's folder"):
        gather_embeddings(out, report.records)


def test_quarantined_lines_stop_the_run_unless_a_lower_share_is_allowed(tmp_path, encoder, capsys):
    pool(tmp_path / "pool.jsonl", TEXTS[:3])
    with (tmp_path / "pool.jsonl").open("a") as fh:
        fh.write("{broken\n")  # line 5: 3 of 4 paths can be embedded
    cfg = from_dict(EmbedConfig, {"pool": str(tmp_path / "pool.jsonl"), "out": str(tmp_path / "emb.jsonl")})
    with pytest.raises(ValueError, match=r"only 3 of 4 paths can be embedded \(75%; 1 lines quarantined to .*"
                                         r"pool.jsonl.quarantine.jsonl\), below min_embedded_share 100%"):
        run_embed(cfg, encoder=encoder, progress=False)
    assert not cfg.out.exists()
    cfg.min_embedded_share = 0.75
    res = run_embed(cfg, encoder=encoder, progress=False)
    assert res.records == 3 and res.quarantined == 1 and len(load_pool(cfg.out).records) == 3
