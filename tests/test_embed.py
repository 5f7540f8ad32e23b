"""qr-ds embed with the offline all-MiniLM-L6-v2: shape, cache reuse, mmap, record -> row."""
import numpy as np
import pytest

from qr_ds.config import from_dict
from qr_ds.data.pool import PathRecord, load_pool, write_pool
from qr_ds.embed.config import EmbedConfig
from qr_ds.embed.encoder import Encoder
from qr_ds.embed.run import load_embeddings, run_embed, text_hash

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
    m = load_embeddings(cfg.out, recs[0].embedding.file)
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
    m2 = load_embeddings(cfg2.out, "emb2.npy")
    np.testing.assert_allclose(m2[0], m[1], atol=1e-6)
    encoder.calls = 0
    assert run_embed(cfg, encoder=encoder, progress=False).encoded == 0 and encoder.calls == 0
