"""SpecAugment masks (Park et al. 2019), shared by every model that trains on spectrogram-like features.

`compute_mask_indices` is transformers' `_compute_mask_indices` (the seed, used by Whisper and wav2vec2)
step for step, including its use of NumPy's global random state, so that a given NumPy seed masks the
same spans as transformers does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from speechtrain.errors import ConfigError
from speechtrain.layers.config_fields import (
    check_choice,
    check_non_negative_int,
    check_positive_int,
    check_probability,
)


def compute_mask_indices(
    shape: tuple[int, int],
    mask_prob: float,
    mask_length: int,
    attention_mask: torch.Tensor | None = None,
    min_masks: int = 0,
) -> np.ndarray:
    """Random spans of `mask_length` covering up to `mask_prob` of each row.

    Args:
        shape: `(batch, length)` of the axis to mask.
        mask_prob: upper bound of the masked fraction (spans may overlap).
        mask_length: length of one span.
        attention_mask: `[batch, length]` right-padded mask; spans stay inside each row's length.
        min_masks: least number of spans per row.

    Returns:
        `[batch, length]` boolean array, True where masked.
    """
    batch_size, sequence_length = shape
    if mask_length < 1:
        raise ValueError("`mask_length` has to be bigger than 0.")
    if mask_length > sequence_length:
        raise ValueError(
            f"`mask_length` has to be smaller than `sequence_length`, but got `mask_length`: {mask_length}"
            f" and `sequence_length`: {sequence_length}`"
        )

    epsilon = np.random.rand(1).item()  # probabilistic rounding of the span count

    def num_spans(input_length: int) -> int:
        count = max(int(mask_prob * input_length / mask_length + epsilon), min_masks)
        if count * mask_length > sequence_length:
            count = sequence_length // mask_length
        if input_length - (mask_length - 1) < count:
            count = max(input_length - (mask_length - 1), 0)
        return count

    input_lengths = (
        attention_mask.detach().sum(-1).tolist() if attention_mask is not None else [sequence_length] * batch_size
    )
    mask = np.zeros((batch_size, sequence_length), dtype=bool)
    max_spans = num_spans(sequence_length)
    if max_spans == 0:
        return mask

    starts = []
    for input_length in input_lengths:
        count = num_spans(input_length)
        row = np.random.choice(np.arange(input_length - (mask_length - 1)), count, replace=False)
        # Rows with fewer spans repeat their first start (or the last, padded, frame) to keep a rectangle.
        dummy = row[0] if len(row) else sequence_length - 1
        starts.append(np.concatenate([row, np.ones(max_spans - count, dtype=np.int32) * dummy]))

    # [batch, spans] starts -> [batch, spans * mask_length] frame indices
    starts = np.broadcast_to(np.array(starts)[:, :, None], (batch_size, max_spans, mask_length))
    offsets = np.broadcast_to(np.arange(mask_length)[None, None, :], (batch_size, max_spans, mask_length))
    indices = (starts + offsets).reshape(batch_size, max_spans * mask_length)
    indices = np.minimum(indices, sequence_length - 1)
    np.put_along_axis(mask, indices, 1, -1)
    return mask


@dataclass
class SpecAugment:
    """Time and feature masking of a batch of features, applied by the task during training only.

    `time_dim` says where time is: Whisper's features are `[batch, n_mels, frames]` (time_dim=2),
    Speech2Text's are `[batch, frames, n_mels]` (time_dim=1). The other non-batch axis is the feature axis.
    """

    mask_time_prob: float = 0.0
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10
    mask_feature_min_masks: int = 0
    time_dim: int = 2

    def __post_init__(self) -> None:
        check_choice(self, "time_dim", (1, 2))
        check_probability(self, "mask_time_prob", "mask_feature_prob", include_one=True)
        check_positive_int(self, "mask_time_length", "mask_feature_length")
        check_non_negative_int(self, "mask_time_min_masks", "mask_feature_min_masks")

    @property
    def enabled(self) -> bool:
        return self.mask_time_prob > 0 or self.mask_feature_prob > 0

    def __call__(self, features: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Return a masked copy of `features` `[batch, ., .]`; masked values are set to 0 as in transformers."""
        features = features.clone()
        feature_dim = 3 - self.time_dim
        batch, num_frames, num_features = features.shape[0], features.shape[self.time_dim], features.shape[feature_dim]
        if self.mask_time_prob > 0:
            time_mask = compute_mask_indices(
                (batch, num_frames),
                self.mask_time_prob,
                self.mask_time_length,
                attention_mask=frame_mask,
                min_masks=self.mask_time_min_masks,
            )
            features.masked_fill_(self._broadcast(time_mask, self.time_dim, features), 0.0)
        if self.mask_feature_prob > 0:
            feature_mask = compute_mask_indices(
                (batch, num_features),
                self.mask_feature_prob,
                self.mask_feature_length,
                min_masks=self.mask_feature_min_masks,
            )
            features.masked_fill_(self._broadcast(feature_mask, feature_dim, features), 0.0)
        return features

    @staticmethod
    def _broadcast(mask: np.ndarray, dim: int, features: torch.Tensor) -> torch.Tensor:
        """`[batch, n]` mask -> a view broadcastable over `features`, with n on axis `dim`."""
        mask = torch.from_numpy(mask).to(features.device)
        return mask[:, :, None] if dim == 1 else mask[:, None, :]


@dataclass
class FilterbankSpecAugment:
    """fairseq's `SpecAugmentTransform` (without time warping) for frames-first filterbanks `[batch, frames, bins]`,
    applied by the task during training only, with the same call protocol as `SpecAugment`.

    Per utterance: `freq_mask_n` bands of width `f ~ U{0, .., freq_mask_f - 1}` starting at
    `U{0, .., bins - f - 1}`, then `time_mask_n` spans of width `t ~ U{0, .., T' - 1}` starting at
    `U{0, .., length - t - 1}`, where `T' = min(time_mask_t, floor(length * time_mask_p))` (no time masks when
    `T' < 1`) and `length` is the utterance's own frame count. Masked values become `mask_value`, or the
    utterance's mean over its real frames when it is None (fairseq's default for its LB/LD policies). Padded
    frames are never touched. One difference: a band is clipped to the bins (fairseq skips masking altogether
    when there are fewer bins than `freq_mask_f`). Random draws come from torch's global generator, so
    `torch.manual_seed` makes them repeat.
    """

    freq_mask_n: int = 0
    freq_mask_f: int = 0
    time_mask_n: int = 0
    time_mask_t: int = 0
    time_mask_p: float = 0.0
    mask_value: float | None = None

    # fairseq examples/speech_to_text/data_utils.py: LibriSpeech basic/double, SwitchBoard mild/strong
    POLICIES: ClassVar[dict[str, dict[str, float]]] = {
        "lb": dict(freq_mask_n=1, freq_mask_f=27, time_mask_n=1, time_mask_t=100, time_mask_p=1.0),
        "ld": dict(freq_mask_n=2, freq_mask_f=27, time_mask_n=2, time_mask_t=100, time_mask_p=1.0),
        "sm": dict(freq_mask_n=2, freq_mask_f=15, time_mask_n=2, time_mask_t=70, time_mask_p=0.2),
        "ss": dict(freq_mask_n=2, freq_mask_f=27, time_mask_n=2, time_mask_t=70, time_mask_p=0.2),
        "none": dict(freq_mask_n=0, freq_mask_f=0, time_mask_n=0, time_mask_t=0, time_mask_p=0.0),
    }

    def __post_init__(self) -> None:
        check_non_negative_int(self, "freq_mask_n", "freq_mask_f", "time_mask_n", "time_mask_t")
        check_probability(self, "time_mask_p", include_one=True)

    @classmethod
    def from_policy(cls, policy: str, **overrides: Any) -> FilterbankSpecAugment:
        """A named fairseq policy ("lb", "ld", "sm", "ss" or "none"), with any field overridden."""
        if policy not in cls.POLICIES:
            raise ConfigError(f"SpecAugment policy {policy!r} is unknown; use one of {sorted(cls.POLICIES)}")
        return cls(**{**cls.POLICIES[policy], **overrides})

    @property
    def enabled(self) -> bool:
        return (self.freq_mask_n > 0 and self.freq_mask_f > 1) or (
            self.time_mask_n > 0 and self.time_mask_t > 1 and self.time_mask_p > 0
        )

    @staticmethod
    def _spans(count: int, max_width: torch.Tensor, extent: torch.Tensor, size: int) -> torch.Tensor:
        """`count` random spans per row -> `[batch, size]` bool. Row b draws widths in [0, max_width[b]) and
        starts in [0, extent[b] - width); rows with max_width < 1 get none."""
        batch = max_width.shape[0]
        draws = torch.rand(2, batch, count, dtype=torch.float64, device=max_width.device)  # float64: no rounding up
        widths = (draws[0] * max_width.clamp(min=0)[:, None]).floor().long()  # [B, N]
        starts = (draws[1] * (extent[:, None] - widths)).floor().long()  # [B, N]
        position = torch.arange(size, device=max_width.device)
        inside = (position >= starts[..., None]) & (position < (starts + widths)[..., None])  # [B, N, size]
        return inside.any(dim=1)

    def __call__(self, features: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """A masked copy of `features` `[batch, frames, bins]`; `frame_mask` `[batch, frames]` marks real frames."""
        if features.dim() != 3:
            raise ValueError(f"FilterbankSpecAugment expects [batch, frames, bins] features, got "
                             f"{tuple(features.shape)}")
        batch, frames, bins = features.shape
        device = features.device
        real = torch.ones(batch, frames, dtype=torch.bool, device=device) if frame_mask is None else frame_mask.bool()
        lengths = real.sum(dim=1)  # [B]
        masked = torch.zeros(batch, frames, bins, dtype=torch.bool, device=device)
        if self.freq_mask_n > 0:
            max_width = torch.full((batch,), min(self.freq_mask_f, bins + 1), device=device)
            band = self._spans(self.freq_mask_n, max_width, torch.full_like(max_width, bins), bins)  # [B, bins]
            masked |= band[:, None, :]
        if self.time_mask_n > 0:
            max_width = torch.minimum(torch.full_like(lengths, self.time_mask_t),
                                      (lengths * self.time_mask_p).floor().long())
            span = self._spans(self.time_mask_n, max_width, lengths, frames)  # [B, frames]
            masked |= span[:, :, None]
        masked &= real[:, :, None]
        if self.mask_value is None:  # each utterance's mean over its real frames
            value = (features * real[:, :, None]).sum(dim=(1, 2)) / (lengths * bins).clamp(min=1)
            value = value[:, None, None].to(features.dtype)
        else:
            value = torch.tensor(self.mask_value, dtype=features.dtype, device=device)
        return torch.where(masked, value, features)
