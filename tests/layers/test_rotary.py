import math

import torch

from speechtrain.layers.rotary import RotaryEmbedding, apply_rotary


def test_rotation_of_a_pair_by_position_times_frequency():
    angles = RotaryEmbedding(4)(3)  # frequencies 1 and 10000^-0.5 = 0.01
    assert torch.allclose(angles[2], torch.tensor([2.0, 0.02, 2.0, 0.02]))
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(3, 1)  # pair (x0, x2) = (1, 0)
    rotated = apply_rotary(x, angles)
    assert torch.allclose(rotated[2], torch.tensor([math.cos(2.0), 0.0, math.sin(2.0), 0.0]), atol=1e-6)


def test_scores_depend_on_relative_position_only_and_norms_are_kept():
    torch.manual_seed(0)
    angles = RotaryEmbedding(8)(12)
    q, k = torch.randn(8), torch.randn(8)
    rotated_q = apply_rotary(q.expand(12, 8), angles)
    rotated_k = apply_rotary(k.expand(12, 8), angles)
    assert torch.allclose(rotated_q[3] @ rotated_k[1], rotated_q[10] @ rotated_k[8], atol=1e-5)
    assert torch.allclose(rotated_q.norm(dim=-1), q.norm().expand(12), atol=1e-5)


def test_bf16_input_keeps_its_dtype_and_extra_features_pass_through():
    angles = RotaryEmbedding(4)(5)
    x = torch.randn(2, 5, 6).bfloat16()
    out = apply_rotary(x, angles)
    assert out.dtype == torch.bfloat16 and torch.equal(out[..., 4:], x[..., 4:])
