"""SoundStorm's iterative parallel decoding (Borsos et al. 2023, sec. 3.3): level by level, coarse to fine.

Each level starts fully masked (except the prompt) and is filled in `steps` passes. In pass `i` of `S` every
masked position samples a token (top-k filtered logits, Gumbel noise at temperature `start_temperature *
(S - 1 - i) / S`, annealed to greedy as the seed); then the `floor(schedule((i + 1) / S) * n)` least confident
of the positions masked before the pass are masked again (`n` = the level's positions to fill). Confidence is
the sampled token's log-probability plus Gumbel noise scaled by `noise_scale * (S - 1 - i) / S` (MaskGIT's
annealed choice noise; the seed ranks by 1 - probability). Positions filled once stay filled. The levels above
the current one are masked throughout, as in training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from speechtrain.layers.masking import check_schedule, mask_fraction
from speechtrain.models.soundstorm.modeling import SoundStorm


def steps_per_level(steps: int | Sequence[int], levels: int) -> list[int]:
    """`steps` for every level: an int for all, or a sequence whose last value repeats (`(16, 1)` = 16 for
    the first level and 1 for the rest, the paper's setting)."""
    steps = [steps] if isinstance(steps, int) else list(steps)
    if not steps or any(not isinstance(s, int) or s < 1 for s in steps):
        raise ValueError(f"steps must be positive integers, got {steps!r}")
    return (steps + [steps[-1]] * levels)[:levels]


def gumbel_noise(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    uniform = torch.rand(shape, generator=generator, device=device)
    exponential = -torch.log(uniform.clamp(min=1e-10))
    return -torch.log(exponential.clamp(min=1e-10))


def top_k_filter(logits: torch.Tensor, filter_thres: float | None) -> torch.Tensor:
    """Keeps the `ceil((1 - filter_thres) * vocab)` largest logits (the seed's `top_k`); None keeps all."""
    if filter_thres is None:
        return logits
    k = max(1, math.ceil((1 - filter_thres) * logits.shape[-1]))
    values, indices = logits.topk(k, dim=-1)
    return torch.full_like(logits, float("-inf")).scatter(-1, indices, values)


@torch.no_grad()
def generate(
    model: SoundStorm,
    num_frames: int | None = None,
    *,
    frame_mask: torch.Tensor | None = None,
    semantic_ids: torch.Tensor | None = None,
    semantic_mask: torch.Tensor | None = None,
    prompt: torch.Tensor | None = None,
    steps: int | Sequence[int] = (16, 1),
    schedule: str = "cosine",
    start_temperature: float = 1.0,
    filter_thres: float | None = 0.7,
    noise_scale: float = 1.0,
    batch_size: int = 1,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Codes for every frame and level.

    Args:
        num_frames: frames to generate; else `frame_mask`'s length, else the semantic tokens' duration
            (`ceil(S * acoustic_rate / semantic_rate)`).
        frame_mask: Bool [B, T], True = frame to generate; padded frames come back as 0.
        semantic_ids, semantic_mask: Long/Bool [B, S], the conditioning (conditional models).
        prompt: Long [B, P, Qp] codes of the first P frames and Qp levels, kept unchanged.
        steps: passes per level (int, or per level with the last repeating).
        generator: every random draw (same device as the model); a fixed seed gives the same codes.

    Returns:
        Long [B, T, Q] codes in `0..codebook_size-1`.
    """
    config = model.config
    check_schedule(schedule)
    device = next(model.parameters()).device
    if semantic_ids is not None:
        batch_size = semantic_ids.shape[0]
    if frame_mask is not None:
        batch_size, num_frames = frame_mask.shape
    if num_frames is None:
        if semantic_ids is None:
            raise ValueError("generate needs num_frames, frame_mask or semantic_ids to know the length")
        semantic_length = int(semantic_ids.shape[1] if semantic_mask is None else semantic_mask.sum(1).max())
        num_frames = math.ceil(semantic_length * config.acoustic_rate / config.semantic_rate)
    frame_mask = torch.ones(batch_size, num_frames, dtype=torch.bool, device=device) if frame_mask is None \
        else frame_mask.bool().to(device)
    levels = config.num_quantizers
    codes = torch.full((batch_size, num_frames, levels), config.mask_id, dtype=torch.long, device=device)
    fixed = torch.zeros_like(codes, dtype=torch.bool)
    if prompt is not None:
        if prompt.dim() != 3 or prompt.shape[0] != batch_size or prompt.shape[1] > num_frames \
                or prompt.shape[2] > levels:
            raise ValueError(f"prompt must be [batch={batch_size}, frames <= {num_frames}, levels <= {levels}], "
                             f"got {tuple(prompt.shape)}")
        codes[:, : prompt.shape[1], : prompt.shape[2]] = prompt.to(device)
        fixed[:, : prompt.shape[1], : prompt.shape[2]] = True

    was_training = model.training
    model.eval()
    hidden = None
    plan = steps_per_level(steps, levels)
    bar = tqdm(total=sum(plan), desc="soundstorm", disable=not progress, leave=False)
    for level, level_steps in enumerate(plan):
        masked = frame_mask & ~fixed[..., level]  # [B, T]
        to_fill = masked.sum(dim=1)
        for step in range(level_steps):
            logits, hidden = model(codes, frame_mask, semantic_ids, semantic_mask,
                                   self_condition=hidden if config.self_condition else None, return_hidden=True)
            logits = top_k_filter(logits[:, :, level].float(), filter_thres)  # [B, T, K]
            annealing = (level_steps - 1 - step) / level_steps
            temperature = max(start_temperature * annealing, 1e-3)
            sampled = (logits / temperature + gumbel_noise(logits.shape, generator, device)).argmax(dim=-1)
            codes[..., level] = torch.where(masked, sampled, codes[..., level])
            remask_count = torch.floor(mask_fraction(torch.tensor((step + 1) / level_steps), schedule)
                                       * to_fill).long()
            confidence = logits.log_softmax(dim=-1).gather(-1, sampled[..., None]).squeeze(-1)
            confidence = confidence + noise_scale * annealing * gumbel_noise(confidence.shape, generator, device)
            confidence = confidence.masked_fill(~masked, float("inf"))  # filled positions are never re-masked
            ranks = confidence.argsort(dim=-1).argsort(dim=-1)  # 0 = least confident
            masked = masked & (ranks < remask_count[:, None])
            codes[..., level] = codes[..., level].masked_fill(masked, config.mask_id)
            bar.update()
    bar.close()
    model.train(was_training)
    return codes.masked_fill(~frame_mask[..., None], 0)
