"""The global batch order: every path once per epoch, the same on every rank, grouped only on request."""
import torch

from qr_ds.train.data import TrainData, question_groups


def _data(by_question: bool, paths_per_question=(3, 1, 4, 2, 5)) -> TrainData:
    d = TrainData.__new__(TrainData)  # the order needs only the path -> question map
    qi = torch.tensor([q for q, n in enumerate(paths_per_question) for _ in range(n)])
    d.records, d.question_index, d.trained = list(range(len(qi))), qi, torch.arange(len(qi))
    d._by_question = question_groups(qi, len(paths_per_question))
    d.seed, d.by_question = 0, by_question
    return d


def test_every_path_once_per_epoch_and_the_same_order_everywhere():
    for by_question in (False, True):
        d = _data(by_question)
        batches = d.epoch_batches(epoch=1, batch=4)
        flat = torch.cat(batches).tolist()
        assert sorted(flat[:15]) == list(range(15)) and len(flat) == 16  # the last batch wraps
        assert all(torch.equal(a, b) for a, b in zip(batches, _data(by_question).epoch_batches(1, 4)))
        assert not all(torch.equal(a, b) for a, b in zip(batches, d.epoch_batches(2, 4)))


def test_by_question_keeps_each_questions_paths_together_and_shuffled_mixes_them():
    grouped = torch.cat(_data(True).epoch_batches(0, 4)).tolist()[:15]
    qs = [int(_data(True).question_index[i]) for i in grouped]
    assert all(len({*qs[i:j]}) == 1 for i, j in _runs(qs))  # contiguous runs, one per question
    assert len(_runs(qs)) == 5
    mixed = torch.cat(_data(False).epoch_batches(0, 4)).tolist()[:15]
    assert len(_runs([int(_data(False).question_index[i]) for i in mixed])) > 5


def _runs(xs):
    out, start = [], 0
    for i in range(1, len(xs) + 1):
        if i == len(xs) or xs[i] != xs[start]:
            out.append((start, i))
            start = i
    return out


# -- tokenization: the batched call gives exactly what one call per path gave --------------------

def _per_path_reference(recs, tokenizers, lens, max_spans):
    """The encoding as it was before batching: one ``encode_sft`` per path and student."""
    from qr_ds.data.format import encode_sft, render_prompt
    from qr_ds.mutual.spans import common_spans, group_spans, token_span_ids
    from qr_ds.train.encoding import instruction_for

    per_student, n_spans = [[] for _ in tokenizers], []
    for rec in recs:
        encs, rels, ends = [], [], []
        for tok, n in zip(tokenizers, lens):
            e = encode_sft(tok, render_prompt(tok, rec.question, instruction_for(rec.task)), rec.response)
            ids, offs = e.input_ids[:n], e.offsets[:n]
            rel = [(a - e.response_start, b - e.response_start) if b > a else (0, 0) for a, b in offs]
            encs.append((ids, offs, e.response_start, len(e.input_ids) > n))
            rels.append(rel)
            ends.append(max([b for a, b in rel if b > a] + [0]))
        spans = group_spans(common_spans(rels, 0, min(min(ends), len(rec.response))), max_spans)
        n_spans.append(len(spans))
        for s, (ids, offs, rstart, cut) in enumerate(encs):
            labels = [t if a >= rstart and b > a else -100 for t, (a, b) in zip(ids, offs)]
            unseen = len(rec.response) - min(ends[s], len(rec.response)) if cut else 0
            per_student[s].append((ids, labels, token_span_ids(rels[s], spans), cut, unseen))
    return per_student, n_spans


def _tiny_tokenizers(recs):
    from qr_ds.testing.builders import corpus_of
    from qr_ds.tiny import train_tokenizer

    text = corpus_of(recs)
    toks = [train_tokenizer(k, text, 300) for k in ("llama-bpe", "gemma-unigram", "qwen-bpe")]
    # a chat template whose prompt carries BOS: the tokenizer must then add none (the other branch)
    toks[0].chat_template = "{{ bos_token }}[U] {{ messages[0]['content'] }} [A] "
    return toks


def test_batched_encoding_equals_one_call_per_path():
    from qr_ds.testing.builders import synthetic_records
    from qr_ds.train.encoding import encode_all

    recs = synthetic_records(6)
    recs[3].response = recs[3].response + " ünïcode ∑ and  two  spaces\n\nand a blank line"
    toks = _tiny_tokenizers(recs)
    lens = [180, 4096, 100]  # two students cut, one whole: truncation and unseen text both covered
    toks[1].backend_tokenizer.enable_truncation(20)  # as a saved tokenizer.json may carry: the call ignores it
    got, got_spans = encode_all(recs, toks, lens, max_spans=5)
    assert toks[1].backend_tokenizer.truncation["max_length"] == 20  # the caller's tokenizer left as it was
    want, want_spans = _per_path_reference(recs, toks, lens, 5)
    assert got_spans == want_spans and max(got_spans) > 1
    for s in range(len(toks)):
        assert [(e.input_ids, e.labels, e.span_ids, e.truncated, e.unseen_chars) for e in got[s]] == want[s]
    assert any(e.truncated for e in got[0]) and not any(e.truncated for e in got[1])
    assert got[0][0].input_ids[0] == toks[0].bos_token_id and got[0][0].input_ids[1] != toks[0].bos_token_id


def test_question_groups_match_a_scan_per_question():
    from qr_ds.train.data import question_groups

    g = torch.Generator().manual_seed(0)
    qi = torch.randint(0, 7, (200,), generator=g)
    qi[qi == 3] = 4  # a question with no path keeps its (empty) slot
    got = question_groups(qi, 7)
    assert len(got) == 7 and len(got[3]) == 0
    for q in range(7):
        assert torch.equal(got[q], torch.nonzero(qi == q).flatten())


def _selection_config(**data):
    from qr_ds.config import from_dict
    from qr_ds.train.config import TrainConfig

    return from_dict(TrainConfig, {"students": [{"name": "a", "model": "m"}, {"name": "b", "model": "m"}],
                                   "data": {"pool": "pool.jsonl", **data}, "output_dir": "out"})


def test_selection_streams_in_pool_order_and_says_why_nothing_is_left():
    import dataclasses

    import pytest

    from qr_ds.testing.builders import synthetic_records
    from qr_ds.train.encoding import select_paths, selected

    recs = synthetic_records(3)  # six paths per question, questions one after another
    mixed = [recs[i + 6 * q] for i in range(6) for q in range(3)]  # interleaved: q0 q1 q2 q0 q1 q2 ...
    mixed[0] = dataclasses.replace(mixed[0], correct=False)
    got = select_paths(_selection_config(paths_per_question=2), mixed)
    assert [r.id for r in got] == [r.id for r in mixed[1:7]]  # the first two right ones of each question, pool order
    assert [line for line, _ in selected(_selection_config(limit=4), enumerate(mixed))] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="run `qr-ds filter` first"):
        select_paths(_selection_config(), [dataclasses.replace(r, correct=None) for r in recs])
    with pytest.raises(ValueError, match="no paths left"):
        select_paths(_selection_config(), [dataclasses.replace(r, correct=False) for r in recs])
    assert len(select_paths(_selection_config(quality_filter=False), [dataclasses.replace(r, correct=None) for r in recs])) == 18
