"""Tiny students' folders load back through the Auto classes exactly as their tokenizers were trained."""
import pytest

from qr_ds.tiny import KINDS, build_tiny_student, tokenizer_dir

TEXT = "Mia has 7 books. She loses 1.\n(1) loses 1: 7 - 1 = 6.\nThe answer is 6. Let's check: 123 café."


@pytest.mark.parametrize("kind", KINDS)
def test_student_folder_round_trips_through_auto_tokenizer(kind, tmp_path):
    """The model folder itself (what a checkpoint and vLLM load), not a side copy: transformers 5
    rebuilds some architectures' own tokenizer class there (a WordPiece beside Qwen2 lost every space)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    out = build_tiny_student(kind, tmp_path / kind, [TEXT] * 20, vocab_size=400, hidden=64, layers=1)
    assert tokenizer_dir(out) == out
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == TEXT  # spaces, newlines, the apostrophe and the accent survive
    saved = PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))  # the pipeline as trained
    assert ids == saved(TEXT, add_special_tokens=False)["input_ids"]  # not a rebuild over its vocabulary
    assert len(ids) < len(TEXT)  # trained pieces, not only characters
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 0)  # what model_config names
