"""The transformers `generate` teacher backend on a tiny local model: every path written, resumable."""
from qr_ds.config import from_dict
from qr_ds.data.pool import load_pool
from qr_ds.tasks import generate_synthetic, write_synthetic
from qr_ds.teacher.config import GenerateConfig
from qr_ds.teacher.generate import generate
from qr_ds.tiny import build_tiny_student


def test_hf_teacher_writes_every_path_and_resumes(tmp_path):
    corpus = [ex.question for ex in generate_synthetic(20, 0)] + ["The answer is 4."]
    model = build_tiny_student("llama-bpe", tmp_path / "teacher", corpus, vocab_size=300)
    write_synthetic(tmp_path / "q.jsonl", 3, seed=0)
    cfg = from_dict(GenerateConfig, {
        "task": "synthetic", "data": str(tmp_path / "q.jsonl"), "out": str(tmp_path / "pool.jsonl"),
        "styles": ["vanilla", "program"],
        "teacher": {"backend": "hf", "model": str(model), "dtype": "float32", "batch_size": 4,
                    "sampling": {"temperature": 0.0, "max_tokens": 8}}})
    first = generate(cfg, progress=False)
    recs = load_pool(tmp_path / "pool.jsonl", log=lambda m: None).records
    assert len(recs) == 6 and all(r.ok and r.teacher == str(model) for r in recs)
    assert {r.style for r in recs} == {"vanilla", "program"}
    again = generate(cfg, progress=False)  # everything done: nothing is asked again
    assert again.requests == 0 and again.skipped == 6 and first.requests == 6 and not first.failures
    assert [r.response for r in load_pool(tmp_path / "pool.jsonl", log=lambda m: None).records] == \
        [r.response for r in recs]
