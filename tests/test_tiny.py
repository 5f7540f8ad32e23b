"""Tiny students load back through AutoTokenizer exactly as their tokenizers were trained."""
import pytest

from qr_ds.tiny import KINDS, build_tiny_student, tokenizer_dir

TEXT = "Mia has 7 books. She loses 1.\n(1) loses 1: 7 - 1 = 6.\nThe answer is 6."


@pytest.mark.parametrize("kind", KINDS)
def test_tokenizer_round_trips_through_auto_tokenizer(kind, tmp_path):
    from transformers import AutoTokenizer

    out = build_tiny_student(kind, tmp_path / kind, [TEXT] * 20, vocab_size=400, hidden=64, layers=1)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir(out))
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    text = tok.decode(ids)
    assert "".join(text.split()) == "".join(TEXT.split())
    assert "Mia has 7 books" in text and "The answer is 6" in text  # spaces survive (WordPiece may pad ".")
    assert len(ids) < len(TEXT)  # trained pieces, not only characters
