"""Cross-tokenizer span alignment on three real tokenizer families trained here (BPE, WordPiece, Unigram)."""
from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from qr_ds.data.format import encode_sft, render_prompt
from qr_ds.mutual.spans import align, common_spans, group_spans, rebase, token_span_ids

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]

CORPUS = [
    "Janet's ducks lay 16 eggs per day. She eats 3 and bakes with 4, selling the rest at $2 each.",
    "Let x = 3.5; then 2x + 1 = 8. The answer is \\boxed{8}.",
    "We compute \\frac{a^2 + b^2}{2} \\geq ab by AM-GM, since (a - b)^2 \\ge 0.",
    "def solve(n):\n    return sum(i * i for i in range(n))  # squares\nprint(solve(10))",
    "Step 1: Recall that water boils at 100°C. Step 2: So the claim is false → answer: no.",
    "Premise: Marie Curie won two Nobel prizes. Hypothesis: she won one. Entailment? Yes — “contradiction”.",
    "Today is 03/15/2021; yesterday was 03/14/2021. Options: (A) 03/14/2021 (B) 12/31/2020.",
    "Backward check: if the answer were 7, then 7 × 6 = 42 ✓. Verified answer: 7.",
    "Fact: π ≈ 3.14159, e ≈ 2.71828. Thus π·e ≈ 8.5397 and √2 ≈ 1.414.",
    "Naïve café déjà vu: 東京 is Tokyo, Ωmega, ünïcödé — all fine!",
] * 20

QUESTION = "A store sells pens at $1.25 each. How many pens can Ann buy with $10?"
RESPONSES = [
    "Each pen costs $1.25, so 10 / 1.25 = 8.\nThe answer is \\boxed{8}.",
    "```python\ndef pens(budget=10.0, price=1.25):\n    return int(budget // price)\nprint(pens())  # 8\n```\nAnswer: 8",
    "We need n·1.25 ≤ 10 ⇒ n ≤ 8. Check: 8 × 1.25 = 10.00 ✓ — café-style naïve check, 東京 aside.",
    "Step 1: $\\frac{10}{1.25} = 8$.  Step 2:   verify  (8)(1.25)=10!!  Final:8",
]


def _byte_bpe() -> Tokenizer:  # GPT-2 / Llama-3 style
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def _wordpiece() -> Tokenizer:  # BERT style: lowercased, accents stripped, whitespace trimmed
    tok = Tokenizer(models.WordPiece(unk_token="<unk>"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=SPECIALS))
    return tok


def _unigram() -> Tokenizer:  # T5 / SentencePiece style: NFKC + metaspace
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(vocab_size=300, special_tokens=SPECIALS, unk_token="<unk>"))
    return tok


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> list[PreTrainedTokenizerFast]:
    loaded = []
    for name, build in [("bpe", _byte_bpe), ("wordpiece", _wordpiece), ("unigram", _unigram)]:
        fast = PreTrainedTokenizerFast(tokenizer_object=build(), unk_token="<unk>", bos_token="<s>",
                                       eos_token="</s>", pad_token="<pad>")
        path = tmp_path_factory.mktemp(name)
        fast.save_pretrained(path)
        loaded.append(AutoTokenizer.from_pretrained(path))
    return loaded


def _encode_all(tokenizers, response):
    encs = [encode_sft(t, render_prompt(t, QUESTION, "Answer with a number."), response) for t in tokenizers]
    assert len({e.text for e in encs}) == 1, "plain template: the same text for every tokenizer"
    start = encs[0].response_start
    return encs, start, start + len(response)


def test_tokenizer_families_really_differ(tokenizers):
    encs, start, end = _encode_all(tokenizers, RESPONSES[2])
    boundaries = [{x for a, b in e.offsets if a < b and start <= a for x in (a, b)} for e in encs]
    assert boundaries[0] != boundaries[1] and boundaries[1] != boundaries[2] and boundaries[0] != boundaries[2]


@pytest.mark.parametrize("response", RESPONSES)
def test_spans_cover_the_same_text_in_every_tokenizer(tokenizers, response):
    encs, start, end = _encode_all(tokenizers, response)
    offsets = [e.offsets for e in encs]
    spans = common_spans(offsets, start, end)
    assert len(spans) >= 5, spans
    assert all(start <= a < b <= end for a, b in spans)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:])), "spans are sorted and disjoint"
    text = encs[0].text
    ids_per_tok = [token_span_ids(o, spans) for o in offsets]
    for k, (a, b) in enumerate(spans):
        for o, ids in zip(offsets, ids_per_tok):
            mine = [o[i] for i, sid in enumerate(ids) if sid == k]
            assert mine, f"span {k} {text[a:b]!r} has no token in some tokenizer"
            covered = set()
            for ta, tb in mine:
                assert a <= ta < tb <= b
                covered.update(range(ta, tb))
            uncovered = [text[i] for i in range(a, b) if i not in covered]
            assert all(c.isspace() for c in uncovered), (text[a:b], uncovered)
    # every non-space response character lies in a span (nothing silently dropped mid-response)
    in_span = {i for a, b in spans for i in range(a, b)}
    first_clean = spans[0][0]
    assert all(text[i].isspace() or i in in_span for i in range(first_clean, end))


@pytest.mark.parametrize("response", RESPONSES)
def test_span_ids_contiguous_monotonic_and_prompt_is_minus_one(tokenizers, response):
    encs, start, end = _encode_all(tokenizers, response)
    spans, ids_per_tok = align([e.offsets for e in encs], start, end, max_spans=6)
    assert 1 <= len(spans) <= 6
    for e, ids in zip(encs, ids_per_tok):
        assert len(ids) == len(e.input_ids)
        for (a, b), sid in zip(e.offsets, ids):
            if b <= start or a == b:
                assert sid == -1, "prompt and special tokens belong to no span"
            if a < start < b:
                assert sid == -1, "a token straddling the response start belongs to no span"
        seen = [sid for sid in ids if sid >= 0]
        assert seen == sorted(seen), "span ids are monotonic along the sequence"
        assert sorted(set(seen)) == list(range(len(spans))), "every span has tokens in every tokenizer"
        for k in range(len(spans)):  # contiguous: no -1 or other id between the first and last k
            pos = [i for i, sid in enumerate(ids) if sid == k]
            assert ids[pos[0]:pos[-1] + 1] == [k] * (pos[-1] - pos[0] + 1)
        assert ids[-1] == -1, "EOS after the response belongs to no span"


def test_group_spans_bounds_count_and_keeps_order():
    spans = [(i * 3, i * 3 + 2) for i in range(23)]
    for m in (1, 4, 7, 23, 50):
        groups = group_spans(spans, m)
        assert len(groups) == min(m, 23)
        assert groups[0][0] == 0 and groups[-1][1] == spans[-1][1]
        assert all(g1[1] <= g2[0] for g1, g2 in zip(groups, groups[1:]))
        if m < 23:
            sizes = [sum(1 for s in spans if g[0] <= s[0] and s[1] <= g[1]) for g in groups]
            assert sum(sizes) == 23 and max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="max_spans"):
        group_spans(spans, 0)


def test_overlapping_byte_tokens_and_trimmed_whitespace():
    # tokenizer A splits one multi-byte character over two overlapping tokens; B trims spaces
    a = [(0, 2), (2, 3), (3, 4), (3, 5), (5, 8)]  # (3,4),(3,5): byte pieces of character 3
    b = [(0, 0), (0, 2), (2, 5), (6, 8)]  # (0,0) is a special token
    spans = common_spans([a, b], 0, 8)
    assert spans == [(0, 2), (2, 5), (5, 8)]  # 3 and 4 are not boundaries for A
    assert token_span_ids(a, spans) == [0, 1, 1, 1, 2]
    assert token_span_ids(b, spans) == [-1, 0, 1, 2]


def test_straddling_token_and_elementary_span_merging():
    a = [(0, 4), (4, 6), (6, 7), (7, 9), (9, 10)]
    b = [(0, 3), (3, 5), (5, 6), (7, 9), (9, 10)]  # "6..7" is whitespace B trimmed
    spans = common_spans([a, b], 5, 10)  # a's (4,6) straddles the response start 5
    assert spans == [(6, 9), (9, 10)]  # (6,7) alone has no B token: merged into the next span
    assert token_span_ids(a, spans) == [-1, -1, 0, 0, 1]
    assert token_span_ids(b, spans) == [-1, -1, -1, 0, 1]  # B's (5,6) precedes the first shared cut


def test_rebase_aligns_different_prompts():
    response = [(0, 3), (3, 7)]
    a = [(0, 0), (0, 5)] + [(x + 5, y + 5) for x, y in response]  # prompt of 5 characters
    b = [(0, 9)] + [(x + 9, y + 9) for x, y in response]  # prompt of 9 characters
    spans, ids = align([rebase(a, 5), rebase(b, 9)], 0, 7, max_spans=8)
    assert spans == [(0, 3), (3, 7)]
    assert ids == [[-1, -1, 0, 1], [-1, 0, 1]]


def test_bad_range_is_reported():
    with pytest.raises(ValueError, match="response range"):
        common_spans([[(0, 1)]], 5, 2)


def test_align_arrays_gives_the_reference_spans_on_random_text(tokenizers):
    """The builder's array form against ``align`` on 300 random texts: unicode, runs of spaces,
    tabs and blank lines (where tokenizers disagree on whitespace, so spans must merge), a prompt
    before the response (negative offsets), paths cut at a token budget, 1 to 1000 spans."""
    import random

    import numpy as np

    from qr_ds.mutual.spans import align_arrays

    rnd = random.Random(0)
    words = ["the", "pens", "  ", "ünï", "∑", "12", "+", "\n\n", "\t", "x=3", "🙂", "東京", "é", "—", "(8)", "1.25"]
    merged = compared = 0
    for _ in range(300):
        response = "".join(rnd.choice(words) + rnd.choice(["", " ", "   "]) for _ in range(rnd.randint(0, 60)))
        encs, start, _ = _encode_all(tokenizers, response)
        rels = [rebase(e.offsets[: rnd.choice([len(e.offsets), rnd.randint(0, len(e.offsets))])], start) for e in encs]
        end = min(min(max([b for a, b in r if b > a] + [0]) for r in rels), len(response))
        for sub in (rels, rels[:2], rels[1:]):
            for m in (1, 3, 1000):
                spans, want = align(sub, 0, end, m)
                n, got = align_arrays([np.asarray(r, np.int64).reshape(-1, 2) for r in sub], end, m)
                assert n == len(spans) and [g.tolist() for g in got] == want, (response, m)
                compared += 1
        merged += len(common_spans(rels, 0, end)) < len(set.intersection(*(
            {x for a, b in r if a < b and a >= 0 and b <= end for x in (a, b)} for r in rels))) - 1
    assert compared == 2700 and merged > 20  # tokenizers disagreed (spans merged, boundaries dropped), often
