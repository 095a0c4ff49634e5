import pytest

from speechtrain.tasks.schedules import warmup_decay_factor


def test_warmup_then_linear_decay():
    factors = [warmup_decay_factor(s, 4, 12, "linear") for s in range(12)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a > b for a, b in zip(factors[4:], factors[5:]))
    assert warmup_decay_factor(12, 4, 12, "cosine", min_lr_ratio=0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown learning-rate decay"):
        warmup_decay_factor(0, 1, 2, "exp")
