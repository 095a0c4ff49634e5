"""Long audio as timed segments, and subtitles of them: the seek-by-timestamps loop of openai/whisper's
`transcribe`, for any recogniser whose tokenizer has timestamp tokens (`timestamp_begin`, `timestamp_segments`,
`timestamp_rules`, `timestamp_prefix_ids`: Whisper's), and SRT/WebVTT writers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Segment:
    start: float  # seconds from the start of the audio
    end: float
    text: str


def transcribe_long(decode_window: Callable[[torch.Tensor], list[int]], tokenizer: Any, waveform: torch.Tensor,
                    sampling_rate: int, window_seconds: float = 30.0) -> list[Segment]:
    """Segments of audio of any length, window by window as openai/whisper's `transcribe`: each 30 s window from the
    current position is decoded with timestamps. When the window's last segment is complete (text, then one
    timestamp, then the end), the next window starts after this one; when speech runs past the window (its tail has
    no end timestamp), it starts at the end of the last complete segment, so the cut sentence is heard whole, once.
    `decode_window(samples [<= 30 s]) -> generated ids` (after the prompt) decodes one window under the tokenizer's
    timestamp rules; the tokenizer gives `timestamp_begin` and `timestamp_segments(ids, offset)` (Whisper's)."""
    window, begin = int(window_seconds * sampling_rate), tokenizer.timestamp_begin
    segments, seek = [], 0
    while seek < len(waveform):
        ids = [token for token in decode_window(waveform[seek : seek + window]) if token != tokenizer.eos_id]
        found = tokenizer.timestamp_segments(ids, offset=seek / sampling_rate)
        segments += found
        complete_ending = len(ids) >= 2 and ids[-1] >= begin and ids[-2] < begin
        if found and not complete_ending:
            seek = max(seek + 1, round(found[-1].end * sampling_rate))
        else:
            seek += window
    return segments


def srt(segments: Sequence[Segment]) -> str:
    """SubRip subtitles of the segments."""
    return "".join(f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n\n"
                   for i, s in enumerate(segments, 1))


def vtt(segments: Sequence[Segment]) -> str:
    """WebVTT subtitles of the segments."""
    return "WEBVTT\n\n" + "".join(f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text}\n\n" for s in segments)


def _clock(seconds: float, separator: str) -> str:
    milliseconds = round(seconds * 1000)
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    return f"{hours:02d}:{minutes:02d}:{milliseconds // 1000:02d}{separator}{milliseconds % 1000:03d}"
