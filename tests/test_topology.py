import dataclasses

import pytest

from qr_ds.distributed.placement import AUTO_RANKS, PLACEMENTS
from qr_ds.distributed.topology import make_layout
from qr_ds.train.config import TrainConfig


def test_separate_equal_ranks_pairs_same_shard():
    lay = make_layout([2, 2], 4, "separate")
    assert lay.student_ranks == ((0, 1), (2, 3))
    assert lay.n_chunks == 2
    assert [lay.cross_group(k) for k in range(2)] == [(0, 2), (1, 3)]
    assert lay.chunks_of(1, 3) == [1]


def test_separate_unequal_ranks_use_lcm_chunks():
    lay = make_layout([2, 1, 3], 6, "separate")
    assert lay.n_chunks == 6
    assert lay.chunks_of(0, 1) == [3, 4, 5]  # student 0's second rank
    assert lay.chunks_of(1, 2) == list(range(6))  # one rank holds everything
    assert lay.cross_group(4) == (1, 2, 5)
    # every chunk is held by exactly one rank per student
    for s in range(3):
        held = sorted(k for r in lay.student_ranks[s] for k in lay.chunks_of(s, r))
        assert held == list(range(6))


def test_colocated_runs_everyone_everywhere():
    lay = make_layout([1, 1, 1], 2, "colocated")
    assert lay.students_on(1) == [0, 1, 2]
    assert lay.cross_group(1) == (1, 1, 1)
    assert lay.cross_groups() == [(0,), (1,)]


def test_world_size_mismatch_is_explained():
    with pytest.raises(ValueError, match=r"1 \+ 2 = 3 ranks but the launcher started 2"):
        make_layout([1, 2], 2, "separate")


@pytest.mark.parametrize("name", PLACEMENTS)
@pytest.mark.parametrize("asked,world", [([AUTO_RANKS, AUTO_RANKS], 4), ([2, 2], 4), ([1, 2, AUTO_RANKS], 6)])
def test_every_placement_holds_each_chunk_once_per_student_in_the_world_it_accepts(name, asked, world):
    placement = PLACEMENTS[name]
    if placement.ranks_problem(asked):
        pytest.skip(placement.ranks_problem(asked))
    lay = make_layout(placement.student_ranks(asked, world, "test"), world, name)
    assert {r for block in lay.student_ranks for r in block} == set(range(world))
    for s, block in enumerate(lay.student_ranks):
        assert sorted(k for r in block for k in lay.chunks_of(s, r)) == list(range(lay.n_chunks))
    # the flag the strategy and the mutual exchange ask: no chunk's states leave their rank
    assert placement.students_share_ranks == all(len(set(lay.cross_group(k))) == 1 for k in range(lay.n_chunks))


def test_the_config_allows_exactly_the_registered_placements():
    (field,) = [f for f in dataclasses.fields(TrainConfig) if f.name == "placement"]
    assert field.metadata["choices"] == tuple(PLACEMENTS)


def test_an_unknown_placement_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown placement 'sideways'; use 'separate' or 'colocated'"):
        make_layout([1], 1, "sideways")
