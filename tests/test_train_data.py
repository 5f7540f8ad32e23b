"""The global batch order: every path once per epoch, the same on every rank, grouped only on request."""
import torch

from qr_ds.train.data import TrainData


def _data(by_question: bool, paths_per_question=(3, 1, 4, 2, 5)) -> TrainData:
    d = TrainData.__new__(TrainData)  # the order needs only the path -> question map
    qi = torch.tensor([q for q, n in enumerate(paths_per_question) for _ in range(n)])
    d.records, d.question_index = list(range(len(qi))), qi
    d._by_question = [torch.nonzero(qi == q).flatten() for q in range(len(paths_per_question))]
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
