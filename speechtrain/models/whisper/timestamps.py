"""Whisper's timestamp tokens: training sequences from segments, the decoding rules and segments from tokens
(`WhisperTokenizer` offers them to the family-independent long-form loop of `speechtrain.long_form`).

A checkpoint's timestamp tokens follow `<|notimestamps|>`: `<|0.00|>`, `<|0.02|>`, ... `<|30.00|>`, one every
0.02 s. A timestamped sequence is the prompt without `<|notimestamps|>`, then per segment `<|start|> text <|end|>`,
then the end token, as transformers' `WhisperTokenizer` writes it for "<|0.00|> text<|1.20|>...".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from speechtrain.long_form import Segment

TIME_PRECISION = 0.02  # seconds per timestamp token
WINDOW_SECONDS = 30.0


def timestamp_begin(tokenizer: Any) -> int:
    """The id of `<|0.00|>`, after checking that the vocabulary holds all 1501 timestamp tokens."""
    begin = tokenizer.generation_config["no_timestamps_token_id"] + 1
    if len(tokenizer) < begin + round(WINDOW_SECONDS / TIME_PRECISION) + 1:
        raise ValueError(f"this Whisper tokenizer has no timestamp tokens after <|notimestamps|> ({len(tokenizer)} "
                         "tokens): timestamps need an OpenAI Whisper vocabulary")
    return begin


def timestamped_ids(tokenizer: Any, segments: Sequence[Mapping[str, Any]]) -> list[int]:
    """Text ids with `<|start|>` and `<|end|>` around each segment's (`start`, `end` in seconds, `text`), no prompt and
    no end token, as the collator takes `token_ids`."""
    begin, ids = timestamp_begin(tokenizer), []
    for segment in segments:
        start, end = float(segment["start"]), float(segment["end"])
        if not 0 <= start <= end <= WINDOW_SECONDS:
            raise ValueError(f"segment {dict(segment)}: needs 0 <= start <= end <= {WINDOW_SECONDS} s")
        ids += [begin + round(start / TIME_PRECISION), *tokenizer.encode(str(segment["text"])),
                begin + round(end / TIME_PRECISION)]
    return ids


def segments_from_ids(tokenizer: Any, ids: Sequence[int], offset: float = 0.0) -> list[Segment]:
    """The complete `<|start|> text <|end|>` segments of generated ids (prompt and end token ignored), shifted by
    `offset` seconds; text with no end timestamp (speech cut by the window's end) is left out (see
    `speechtrain.long_form.transcribe_long`)."""
    begin, segments, start, text = timestamp_begin(tokenizer), [], None, []
    for token in ids:
        if token >= begin:
            seconds = offset + (token - begin) * TIME_PRECISION
            if start is None:
                start = seconds
            elif text:
                segments.append(Segment(round(start, 2), round(seconds, 2), tokenizer.decode(text).strip()))
                start, text = None, []
            else:
                start = seconds  # two timestamps in a row: the second starts the next segment
        elif start is not None:
            text.append(token)
    return segments


class TimestampRules:
    """transformers' `WhisperTimeStampLogitsProcessor` (openai/whisper's `ApplyTimestampRules`) on log-probabilities:
    timestamps in pairs and never decreasing, the first token a timestamp (at most `max_initial_timestamp_index`
    steps in), and a timestamp whenever their total probability beats every text token."""

    def __init__(self, tokenizer: Any, begin_index: int) -> None:
        config = tokenizer.generation_config
        self.no_timestamps = config["no_timestamps_token_id"]
        self.begin, self.eos, self.begin_index = timestamp_begin(tokenizer), tokenizer.eos_id, begin_index
        self.max_initial_index = config.get("max_initial_timestamp_index")

    def __call__(self, history: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
        """history `[N, tokens so far]` (the prompt included), log_probs `[N, vocab]` -> log_probs."""
        scores = log_probs.clone()
        scores[:, self.no_timestamps] = float("-inf")
        lowest = []
        for row, sequence in enumerate(history[:, self.begin_index :].tolist()):
            last = len(sequence) >= 1 and sequence[-1] >= self.begin
            penultimate = len(sequence) < 2 or sequence[-2] >= self.begin
            if last:
                if penultimate:
                    scores[row, self.begin :] = float("-inf")
                else:
                    scores[row, : self.eos] = float("-inf")
            timestamps = [token for token in sequence if token >= self.begin]
            if not timestamps:
                lowest.append(self.begin)
            else:
                lowest.append(timestamps[-1] if last and not penultimate else timestamps[-1] + 1)
        vocabulary = torch.arange(scores.shape[-1], device=scores.device)
        lowest_allowed = torch.tensor(lowest, device=scores.device)[:, None]  # [N, 1]
        scores.masked_fill_((vocabulary >= self.begin) & (vocabulary < lowest_allowed), float("-inf"))
        if history.shape[1] == self.begin_index:
            scores[:, : self.begin] = float("-inf")
            if self.max_initial_index is not None:
                scores[:, self.begin + self.max_initial_index + 1 :] = float("-inf")
        renormalised = scores.float().log_softmax(dim=-1)
        timestamp_mass = renormalised[:, self.begin :].logsumexp(dim=-1)
        best_text = renormalised[:, : self.begin].max(dim=-1).values
        scores[:, : self.begin].masked_fill_((timestamp_mass > best_text)[:, None], float("-inf"))
        return scores
