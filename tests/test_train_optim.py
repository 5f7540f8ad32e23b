"""LR schedules: warmup, then constant, linear or cosine decay to min_lr_ratio."""
import pytest

from qr_ds.train.optim import lr_factor


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine"])
def test_warmup_then_schedule(kind):
    f = lr_factor(kind, warmup=4, total=14, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0)
    end = f(14)
    assert end == pytest.approx(1.0 if kind == "constant" else 0.1)
    if kind == "cosine":  # slow start, fast middle: above linear before half-way
        assert f(6) > lr_factor("linear", 4, 14, 0.1)(6)
