"""The VITS losses (jaywalnut310/vits losses.py): least-squares GAN, feature matching and the prior KL.

All are computed in float32 whatever the inputs' dtype, as the original does under mixed precision.
Per-discriminator terms come back detached, for logging.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def discriminator_loss(
    real_logits: Sequence[torch.Tensor], fake_logits: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Least squares: sum over discriminators of `mean((1 - real)^2) + mean(fake^2)`.

    Returns the total and, per discriminator, the real and the fake term (detached).
    """
    total = torch.zeros((), device=real_logits[0].device)
    real_losses, fake_losses = [], []
    for real, fake in zip(real_logits, fake_logits, strict=True):
        real_loss = torch.mean((1 - real.float()) ** 2)
        fake_loss = torch.mean(fake.float() ** 2)
        total = total + real_loss + fake_loss
        real_losses.append(real_loss.detach())
        fake_losses.append(fake_loss.detach())
    return total, real_losses, fake_losses


def generator_loss(fake_logits: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Least squares for the generator: sum over discriminators of `mean((1 - fake)^2)`; returns the total and
    the per-discriminator terms (detached)."""
    losses = [torch.mean((1 - fake.float()) ** 2) for fake in fake_logits]
    return torch.stack(losses).sum(), [loss.detach() for loss in losses]


def feature_loss(
    real_feature_maps: Sequence[Sequence[torch.Tensor]], fake_feature_maps: Sequence[Sequence[torch.Tensor]]
) -> torch.Tensor:
    """Feature matching: `2 * sum over every layer of every discriminator of mean |real - fake|`, the real
    maps detached (the original's factor 2 included: train with weight 1 to match it)."""
    total = torch.zeros((), device=fake_feature_maps[0][0].device)
    for real_maps, fake_maps in zip(real_feature_maps, fake_feature_maps, strict=True):
        for real, fake in zip(real_maps, fake_maps, strict=True):
            total = total + torch.mean(torch.abs(real.float().detach() - fake.float()))
    return total * 2


def kl_loss(
    z_p: torch.Tensor, logs_q: torch.Tensor, m_p: torch.Tensor, logs_p: torch.Tensor, z_mask: torch.Tensor
) -> torch.Tensor:
    """KL between the posterior sample mapped through the flow and the text prior, per unmasked element.

    `z_p`, `logs_q` (posterior log-deviation), `m_p`, `logs_p` (prior mean and log-deviation, expanded to
    frames): `[B, C, frames]`; `z_mask`: `[B, 1, frames]`. Returns
    `sum((logs_p - logs_q - 0.5 + 0.5 * (z_p - m_p)^2 * exp(-2 logs_p)) * z_mask) / sum(z_mask)`:
    the original divides by the mask's sum, not by its sum times C.
    """
    z_p, logs_q, m_p, logs_p, z_mask = (t.float() for t in (z_p, logs_q, m_p, logs_p, z_mask))
    kl = logs_p - logs_q - 0.5 + 0.5 * (z_p - m_p) ** 2 * torch.exp(-2.0 * logs_p)
    return torch.sum(kl * z_mask) / torch.sum(z_mask)
