"""The VITS losses against element-by-element Python loops of the original formulas."""

import math

import pytest
import torch

from speechtrain.tasks.gan_losses import discriminator_loss, feature_loss, generator_loss, kl_loss


def random_logits(seed: int, shapes=((2, 5), (2, 3), (2, 7))) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=generator, dtype=torch.float64) for shape in shapes]


def loop_mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def test_discriminator_loss_is_least_squares_per_discriminator():
    real, fake = random_logits(0), random_logits(1)
    total, real_terms, fake_terms = discriminator_loss(real, fake)
    expected_real = [loop_mean((1 - x) ** 2 for x in r.flatten().tolist()) for r in real]
    expected_fake = [loop_mean(x**2 for x in f.flatten().tolist()) for f in fake]
    assert [t.item() for t in real_terms] == pytest.approx(expected_real, rel=1e-6)
    assert [t.item() for t in fake_terms] == pytest.approx(expected_fake, rel=1e-6)
    assert total.item() == pytest.approx(sum(expected_real) + sum(expected_fake), rel=1e-6)
    assert total.dtype == torch.float32 and not real_terms[0].requires_grad
    perfect, _, _ = discriminator_loss([torch.ones(2, 4)] * 3, [torch.zeros(2, 4)] * 3)
    assert perfect.item() == 0.0


def test_generator_loss_is_least_squares_towards_real():
    fake = random_logits(2)
    total, terms = generator_loss(fake)
    expected = [loop_mean((1 - x) ** 2 for x in f.flatten().tolist()) for f in fake]
    assert [t.item() for t in terms] == pytest.approx(expected, rel=1e-6)
    assert total.item() == pytest.approx(sum(expected), rel=1e-6)
    assert generator_loss([torch.ones(3, 2), torch.ones(1, 9)])[0].item() == 0.0


def test_feature_loss_is_twice_the_summed_mean_absolute_differences():
    generator = torch.Generator().manual_seed(3)
    shapes = [[(2, 4, 6), (2, 8, 3)], [(2, 4, 5, 2), (2, 1, 3, 2), (2, 1)]]
    real = [[torch.randn(*s, generator=generator) for s in group] for group in shapes]
    fake = [[torch.randn(*s, generator=generator) for s in group] for group in shapes]
    expected = 2 * sum(
        loop_mean(abs(a - b) for a, b in zip(r.flatten().tolist(), f.flatten().tolist()))
        for real_maps, fake_maps in zip(real, fake) for r, f in zip(real_maps, fake_maps)
    )
    assert feature_loss(real, fake).item() == pytest.approx(expected, rel=1e-6)
    assert feature_loss(real, [[m.clone() for m in maps] for maps in real]).item() == 0.0


def test_kl_loss_is_the_original_masked_estimate():
    generator = torch.Generator().manual_seed(4)
    z_p, logs_q, m_p, logs_p = (torch.randn(2, 3, 5, generator=generator) for _ in range(4))
    z_mask = torch.tensor([[[1.0, 1, 1, 1, 1]], [[1.0, 1, 1, 0, 0]]])
    total = 0.0
    for b in range(2):
        for c in range(3):
            for t in range(5):
                if z_mask[b, 0, t]:
                    lp, lq = logs_p[b, c, t].item(), logs_q[b, c, t].item()
                    total += lp - lq - 0.5 + 0.5 * (z_p[b, c, t].item() - m_p[b, c, t].item()) ** 2 * math.exp(-2 * lp)
    expected = total / 8  # the mask's sum: 8 frames, not 8 x 3 elements
    assert kl_loss(z_p, logs_q, m_p, logs_p, z_mask).item() == pytest.approx(expected, rel=1e-5)
    # posterior deviation equal to the prior's and the sample one deviation from the mean: exactly zero
    at_one_sigma = m_p + torch.exp(logs_p) * torch.where(torch.rand(2, 3, 5, generator=generator) > 0.5, 1.0, -1.0)
    assert kl_loss(at_one_sigma, logs_p, m_p, logs_p, z_mask).abs().item() < 1e-6
    padded = z_p.clone()
    padded[1, :, 3:] = 1e6  # masked frames do not count
    assert kl_loss(padded, logs_q, m_p, logs_p, z_mask).item() == pytest.approx(expected, rel=1e-5)


def test_losses_are_differentiable_in_float32_from_half_inputs():
    generator = torch.Generator().manual_seed(5)
    fake = [torch.randn(2, 6, generator=generator).bfloat16().requires_grad_() for _ in range(2)]
    fake_maps = [[torch.randn(2, 3, 4, generator=generator).bfloat16().requires_grad_()]]
    real_maps = [[torch.randn(2, 3, 4, generator=generator).requires_grad_()]]
    z_p, logs_q, m_p, logs_p = (torch.randn(1, 2, 3, generator=generator).requires_grad_() for _ in range(4))
    losses = [discriminator_loss([f.detach() + 1 for f in fake], fake)[0], generator_loss(fake)[0],
              feature_loss(real_maps, fake_maps), kl_loss(z_p, logs_q, m_p, logs_p, torch.ones(1, 1, 3))]
    assert all(loss.dtype == torch.float32 and loss.dim() == 0 for loss in losses)
    sum(losses).backward()
    for tensor in [*fake, fake_maps[0][0], z_p, logs_q, m_p, logs_p]:
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0
    assert real_maps[0][0].grad is None  # feature matching does not train on the real maps
