"""Collation of `SpeechDataset` items into the encoder-decoder batch of docs/design.md."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from speechtrain.layers.labels import IGNORE_INDEX
from speechtrain.models.feature_extraction import FeatureExtractor


class AsrCollator:
    """Turns dataset items into a batch; items that failed to load (None) are dropped and counted.

    With the item's forced prefix P (P[0] the decoder start token; the tokenizer's unless the item gives its own
    `prefix_ids`), its prompt ids Q (`prompt_ids`: Whisper's `<|startofprev|>` + previous text, often none) and text
    ids T:
        input_features:         float32 [B, n_features, frames]
        attention_mask:         bool [B, frames], True on frames that hold audio
        decoder_input_ids:      int64 [B, L], Q + P + T, right-padded with `pad_id`
        labels:                 int64 [B, L], [-100] * len(Q) + P[1:] + T + [eos], right-padded with -100: the
                                prompt is context, never a target
        decoder_attention_mask: bool [B, L], True on real tokens
        texts, ids:             list[str] of length B
        num_skipped:            int, items dropped from this batch because they failed to load
        audio_seconds:          float, seconds of unpadded audio in the batch (for throughput)
    where L = the longest Q + P + T. The whole batch is None when every item failed to load.
    """

    def __init__(self, feature_extractor: FeatureExtractor, tokenizer: Any):
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer

    def __call__(self, items: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
        loaded = [item for item in items if item is not None]
        if not loaded:
            return None
        features, frame_mask = self.feature_extractor([item["audio"] for item in loaded])

        sequences = []  # (decoder inputs, labels) per item
        for item in loaded:
            prompt = list(item.get("prompt_ids") or [])
            prefix = list(item.get("prefix_ids") or self.tokenizer.prefix_ids)
            text, end = list(item["token_ids"]), [self.tokenizer.eos_id]
            sequences.append((prompt + prefix + text, [IGNORE_INDEX] * len(prompt) + prefix[1:] + text + end))
        length = max(len(inputs) for inputs, _ in sequences)
        decoder_input_ids = torch.full((len(loaded), length), self.tokenizer.pad_id, dtype=torch.long)
        labels = torch.full((len(loaded), length), IGNORE_INDEX, dtype=torch.long)
        decoder_attention_mask = torch.zeros((len(loaded), length), dtype=torch.bool)
        for row, (inputs, targets) in enumerate(sequences):
            decoder_input_ids[row, : len(inputs)] = torch.tensor(inputs)
            labels[row, : len(targets)] = torch.tensor(targets)
            decoder_attention_mask[row, : len(inputs)] = True
        return {
            "input_features": features,
            "attention_mask": frame_mask,
            "decoder_input_ids": decoder_input_ids,
            "labels": labels,
            "decoder_attention_mask": decoder_attention_mask,
            "texts": [item["text"] for item in loaded],
            "ids": [item["id"] for item in loaded],
            "num_skipped": len(items) - len(loaded),
            "audio_seconds": sum(item["audio"].numel() for item in loaded) / self.feature_extractor.sampling_rate,
        }
