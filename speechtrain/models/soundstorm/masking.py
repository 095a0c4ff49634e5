"""SoundStorm's training corruption (Borsos et al. 2023, sec. 3.2, and lucidrains/soundstorm-pytorch).

Per batch: one level `q`, drawn uniformly. Per sample, on its true (unpadded) length `L`:
1. a prompt prefix of `P ~ U{0, ..., L - 2}` frames is left untouched at every level (the seed draws one `P`
   for the whole batch from the shortest sample; drawing it per sample lets every sample use its own length);
2. a time `t ~ U[0, 1)` gives the masked fraction `schedule(t)` (cosine or linear), and exactly
   `max(1, floor(fraction * (L - P)))` of the `L - P` non-prompt frames are picked at level `q`;
3. every non-prompt frame is masked at the levels above `q`; the levels below `q` and all padding stay as they are.

The picked positions are corrupted BERT-style, as the seed (soundstorm-pytorch 0.6): with probability 1/2 per
batch `floor(no_replace_prob * picked)` of them keep their token, and with probability 1/2
`floor(random_token_prob * (1 - no_replace_prob if the first applied else 1) * rest)` of the others, leaving at
least one, get a uniformly random token; the rest get the mask id. The loss covers every picked position (the
seed scores only those that received the mask id, which leaves the kept and random tokens unscored; BERT, which
the seed cites, scores all of them).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from speechtrain.layers.labels import IGNORE_INDEX
from speechtrain.layers.masking import check_schedule, mask_fraction, masked_count, random_subset


class MaskedBatch(NamedTuple):
    inputs: torch.Tensor  # Long [B, T, Q]: codes with mask ids and random tokens
    loss_mask: torch.Tensor  # Bool [B, T]: positions of level `level` that are scored
    level: int  # the level q trained on
    labels: torch.Tensor  # Long [B, T]: the original codes of level q on `loss_mask`, IGNORE_INDEX elsewhere
    prompt_lengths: torch.Tensor  # Long [B]: untouched prefix frames
    num_masked: torch.Tensor  # Long [B]: picked positions of level q


class SoundStormMasking:
    """Draws a `MaskedBatch` from clean codes. Tensors are drawn on the codes' device from `generator` (the global
    RNG when None); the batch's three decisions (its level and the two corruption coins) on the CPU from `choices`,
    so that no decision waits for the device. `choices` defaults to `generator` when that is a CPU generator,
    else to torch's global CPU generator; pass a seeded CPU generator with a seeded device one."""

    def __init__(self, codebook_size: int, num_quantizers: int, schedule: str = "cosine",
                 no_replace_prob: float = 0.15, random_token_prob: float = 0.1) -> None:
        for name, value in (("no_replace_prob", no_replace_prob), ("random_token_prob", random_token_prob)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"SoundStormMasking {name}={value!r} must be in [0, 1)")
        self.codebook_size, self.num_quantizers = codebook_size, num_quantizers
        self.mask_id = codebook_size
        self.schedule = check_schedule(schedule)
        self.no_replace_prob, self.random_token_prob = no_replace_prob, random_token_prob

    def __call__(
        self,
        codes: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        level: int | None = None,
        times: torch.Tensor | None = None,
        prompt_lengths: torch.Tensor | None = None,
        choices: torch.Generator | None = None,
    ) -> MaskedBatch:
        """`codes` Long [B, T, Q] (ids < codebook_size), `frame_mask` Bool [B, T]. `level`, `times` [B] and
        `prompt_lengths` [B] are drawn unless given (tests and analyses fix them)."""
        batch, frames, levels = codes.shape
        device = codes.device
        if levels != self.num_quantizers:
            raise ValueError(f"codes have {levels} levels, the masking was built for {self.num_quantizers}")
        frame_mask = torch.ones(batch, frames, dtype=torch.bool, device=device) if frame_mask is None \
            else frame_mask.bool()

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(shape, generator=generator, device=device)

        if choices is None and generator is not None and generator.device.type == "cpu":
            choices = generator

        def coin() -> float:
            return float(torch.rand((), generator=choices))

        lengths = frame_mask.sum(dim=1)
        if level is None:
            level = int(coin() * levels)
        if prompt_lengths is None:
            prompt_lengths = (rand(batch) * (lengths - 1).clamp(min=0)).long()  # U{0, ..., L - 2}
        if times is None:
            times = rand(batch)
        positions = torch.arange(frames, device=device)
        free = frame_mask & (positions[None, :] >= prompt_lengths.to(device)[:, None])  # [B, T]
        num_masked = masked_count(free.sum(dim=1), mask_fraction(times.to(device), self.schedule))
        picked = random_subset(free, num_masked, generator)

        replace = picked.clone()  # positions that get the mask id
        kept_fraction = 1.0
        if self.no_replace_prob > 0 and coin() < 0.5:
            kept_fraction -= self.no_replace_prob
            replace &= ~random_subset(picked, _floor_count(picked, self.no_replace_prob), generator)
        level_codes = codes[..., level]
        if self.random_token_prob > 0 and coin() < 0.5:
            count = torch.minimum(_floor_count(replace, self.random_token_prob * kept_fraction),
                                  (replace.sum(dim=1) - 1).clamp(min=0))
            randomised = random_subset(replace, count, generator)
            random_tokens = torch.randint(0, self.codebook_size, (batch, frames), generator=generator, device=device)
            level_codes = torch.where(randomised, random_tokens, level_codes)
            replace &= ~randomised

        inputs = codes.clone()
        inputs[..., level] = level_codes.masked_fill(replace, self.mask_id)
        inputs[..., level + 1:] = inputs[..., level + 1:].masked_fill(free[..., None], self.mask_id)
        labels = codes[..., level].masked_fill(~picked, IGNORE_INDEX)
        return MaskedBatch(inputs, picked, level, labels, prompt_lengths.to(device), num_masked)


def _floor_count(mask: torch.Tensor, fraction: float) -> torch.Tensor:
    """floor(fraction * positions) per row, the seed's subset size."""
    return masked_count(mask.sum(dim=1), torch.tensor(fraction), minimum=0)

