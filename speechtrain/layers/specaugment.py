"""SpecAugment masks (Park et al. 2019), shared by every model that trains on spectrogram-like features.

`compute_mask_indices` is transformers' `_compute_mask_indices` (the seed, used by Whisper and wav2vec2)
step for step, including its use of NumPy's global random state, so that a given NumPy seed masks the
same spans as transformers does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


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
        if self.time_dim not in (1, 2):
            raise ValueError(f"SpecAugment.time_dim must be 1 or 2, got {self.time_dim}")
        for name in ("mask_time_prob", "mask_feature_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SpecAugment.{name} must lie in [0, 1], got {getattr(self, name)}")

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
