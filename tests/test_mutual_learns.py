"""Known-answer experiment for the mutual loss (qr_ds/experiments/planted_mutual.py): a pre-trained and a
from-scratch tiny student of different architectures and tokenizers train together on co-routed
paths. benchmarks/bench_mutual.py runs it longer and writes JSON."""
import pytest
import torch

from qr_ds.experiments.planted_mutual import Competence, run_competence


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_anchored_competence_favours_the_pretrained_student_and_z_keeps_its_scale():
    r = run_competence(Competence(mutual_steps=100))
    assert r["sft_per_token_start"][0] < r["sft_per_token_start"][1] - 3, "the planted gap is there"
    assert r["share_paths_favouring_pretrained"] >= 0.8, r
    assert r["gamma_pretrained_mean"] > r["gamma_pretrained_start"] + 0.15, r
    for ratio in r["z_norm_ratio"]:
        assert 0.8 <= ratio <= 2.0, r["z_norm_ratio"]  # the stated factor (docs/architecture.md)


def test_paper_eq8_shrinks_z_and_leaves_competence_near_uniform():
    r = run_competence(Competence(mutual_steps=100), form="paper")
    for ratio in r["z_norm_ratio"]:
        assert ratio < 0.85, r["z_norm_ratio"]
    assert abs(r["gamma_pretrained_mean"] - 0.5) < 0.1 and r["share_paths_favouring_pretrained"] < 0.5, r
