"""One rule divides the launcher's world between students (qr_ds/train/world.py), and the world of a
hostfile is what DeepSpeed's launcher would start from it."""
import pytest

from qr_ds.config import apply_override, from_dict
from qr_ds.train.config import TrainConfig
from qr_ds.train.world import global_batch, hostfile_world, slurm_world, student_ranks


def config(*ranks, placement="separate", **top) -> TrainConfig:
    return from_dict(TrainConfig, {"students": [{"name": f"s{i}", "model": "m", "ranks": r} for i, r in enumerate(ranks)],
                                   "data": {"pool": "p.jsonl"}, "placement": placement, **top})


@pytest.mark.parametrize("ranks,world,expected", [
    (("auto", "auto"), 16, [8, 8]),
    (("auto", "auto"), 8, [4, 4]),
    ((6, "auto"), 8, [6, 2]),
    ((2, "auto", "auto"), 10, [2, 4, 4]),
    ((4, 4), 8, [4, 4]),
])
def test_fixed_ranks_and_equal_shares_make_up_the_world(ranks, world, expected):
    assert student_ranks(config(*ranks), world) == expected


@pytest.mark.parametrize("ranks,world,needle", [
    ((4, 4), 16, "4 + 4 does not fit the 16 processes started by H (want a world of 8, or ranks: auto"),
    (("auto", "auto"), 3, "want a world of a positive multiple of 2"),
    ((6, "auto"), 6, "want a world of 6 plus a positive multiple of 1"),  # an auto student gets at least one
])
def test_a_world_that_does_not_fit_names_the_rule_and_the_launcher(ranks, world, needle):
    with pytest.raises(ValueError, match="config key 'students\\[\\].ranks'") as e:
        student_ranks(config(*ranks), world, "H")
    assert needle in str(e.value)


def test_colocated_runs_every_student_on_every_rank():
    assert student_ranks(config("auto", "auto", placement="colocated"), 3) == [3, 3]


def test_global_batch_is_micro_batch_times_lcm_times_accumulation():
    cfg = config(6, 2, micro_batch_paths=8, grad_accum=2)
    assert global_batch(cfg, [6, 2]) == 8 * 6 * 2


def test_bracket_and_dotted_override_keys_are_one_key():
    a, b = {"students": [{"ranks": 4}, {}]}, {"students": [{"ranks": 4}, {}]}
    apply_override(a, "students[0].ranks", 8)
    apply_override(b, "students.0.ranks", 8)
    assert a == b == {"students": [{"ranks": 8}, {}]}


@pytest.mark.parametrize("text", [
    "node-a slots=8\nnode-b slots=8\n",
    "# two nodes\nnode-a slots=8\n\nnode-b slots=4\n",
    "node-a slots=8\nnode-a slots=8\n",  # a host twice: DeepSpeed refuses it (hand counting once said 16)
    "node-a\n",
])
def test_hostfile_world_equals_what_deepspeeds_launcher_reads(tmp_path, text):
    from deepspeed.launcher.runner import fetch_hostfile

    path = tmp_path / "hostfile"
    path.write_text(text)
    try:
        expected = sum(fetch_hostfile(str(path)).values())
    except ValueError as e:
        with pytest.raises(ValueError, match=f"--hostfile {path}: "):
            hostfile_world(path)
        assert "multiple entries" in str(e) or "bad entry" in str(e)
        return
    assert hostfile_world(path).size == expected


@pytest.mark.parametrize("env,size", [
    ({"SLURM_NNODES": "2", "SLURM_GPUS_PER_NODE": "h100:8"}, 16),
    ({"SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "4"}, 8),
    ({"SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "8(x2)"}, 16),  # srun starting the ranks itself
    ({}, None),
])
def test_slurm_allocation_gives_nodes_times_gpus(env, size):
    world = slurm_world(env)
    assert (world.size if world else None) == size


def test_slurm_without_gpus_or_tasks_asks_for_num_procs():
    with pytest.raises(ValueError, match="give --num-procs N"):
        slurm_world({"SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "1"})
