import pytest
import torch

from speechtrain.models.soundstorm import SoundStorm, SoundStormConfig, generate
from speechtrain.models.soundstorm.generation import steps_per_level

K, Q = 16, 3


@pytest.fixture(scope="module")
def model() -> SoundStorm:
    torch.manual_seed(0)
    config = SoundStormConfig(codebook_size=K, num_quantizers=Q, dim=32, depth=1, heads=2, dim_head=16,
                              conv_kernel_size=5, num_semantic_tokens=10, semantic_rate=25.0, acoustic_rate=50.0,
                              self_condition=True)
    return SoundStorm(config)


def run(model, seed, **kwargs):
    semantic = torch.randint(0, 10, (2, 12), generator=torch.Generator().manual_seed(0))
    return generate(model, semantic_ids=semantic, generator=torch.Generator().manual_seed(seed), **kwargs)


def test_fills_every_position_keeps_the_prompt_and_is_seeded(model):
    prompt = torch.randint(0, K, (2, 5, 2), generator=torch.Generator().manual_seed(3))
    codes = run(model, 0, prompt=prompt, steps=(6, 2))
    assert codes.shape == (2, 24, Q)  # 12 semantic frames at 25 Hz = 24 frames at 50 Hz
    assert ((codes >= 0) & (codes < K)).all()  # no mask id left anywhere
    assert torch.equal(codes[:, :5, :2], prompt)
    assert torch.equal(codes, run(model, 0, prompt=prompt, steps=(6, 2)))
    assert not torch.equal(codes, run(model, 1, prompt=prompt, steps=(6, 2)))
    assert model.training  # the mode it came in with


def test_padded_frames_come_back_zero_and_real_ones_filled(model):
    frame_mask = torch.ones(2, 24, dtype=torch.bool)
    frame_mask[1, 17:] = False
    codes = run(model, 0, frame_mask=frame_mask, steps=3)
    assert (codes[1, 17:] == 0).all()
    assert ((codes >= 0) & (codes < K)).all()


def test_each_step_unmasks_by_the_schedule(model, monkeypatch):
    """Counts the mask ids of level 0 the model sees at each of 4 passes: 24, then floor(cos(i/4 pi/2) 24)."""
    seen = []
    forward = model.forward

    def spy(codes, *args, **kwargs):
        seen.append(((codes[..., 0] == K).sum(1).tolist(), (codes[..., 1:] == K).all().item()))
        return forward(codes, *args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    run(model, 0, steps=(4, 1), num_frames=24)
    level0 = [counts for counts, _ in seen[:4]]
    assert level0 == [[24, 24], [22, 22], [16, 16], [9, 9]]
    assert all(upper_masked for _, upper_masked in seen[:4])
    assert len(seen) == 4 + 1 + 1


def test_steps_per_level():
    assert steps_per_level((16, 1), 4) == [16, 1, 1, 1]
    assert steps_per_level(3, 2) == [3, 3]
    with pytest.raises(ValueError, match="positive"):
        steps_per_level((0,), 2)
