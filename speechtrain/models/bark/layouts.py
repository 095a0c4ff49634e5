"""Training inputs and labels for Bark's three sub-models, laid out exactly as Bark's generation builds them (the
prompt builders here are the ones `generation.py` calls), so a model trained on them sees at training time what it
sees when generating. Every constant comes from `config.BarkGenerationConfig` (transformers' generation-config
defaults). Labels are `IGNORE_INDEX` (-100) wherever generation does not sample from the logits.

- Semantic: `text + TEXT_ENCODING_OFFSET` cut/padded to 256 with TEXT_PAD, the semantic history cut/padded to 256
  with SEMANTIC_PAD, SEMANTIC_INFER, then the target semantic ids. The model sums the text and history embeddings
  (`BarkCausalModel.embed_merged_context`), so `input_ids` are 256 longer than `labels`. The label after the last
  semantic id is SEMANTIC_PAD, which Bark's generation treats as end of sequence.
- Coarse: one example per generation window: 256 semantic ids around the current position (`max_semantic_history`
  before it), COARSE_INFER, up to `max_coarse_history` earlier coarse tokens, then the window's `sliding_window_len`
  new tokens; coarse tokens interleave the two codebooks, codebook `c` offset by `SEMANTIC_VOCAB_SIZE + c *
  CODEBOOK_SIZE`.
- Fine: `max_fine_input_length`-frame windows of the 8 codebooks, placed where Bark's generation loop places
  them (`fine_spans`); each frame is predicted once, in the first window that holds it: the target codebook and
  those above it are CODEBOOK_SIZE (the "not predicted yet" value) on those frames, and only they are scored.
  Frames an earlier window predicted are given in full, in training as in `generation.generate_fine`, which keeps
  each window's predictions of these frames only. (suno-ai/bark and transformers re-predict a window's overlap
  with the previous one, seeing the target codebook there, and keep that: past 1024 frames most of their output
  would come from positions no training scores.) One difference cannot be avoided: generation writes its
  predictions into the padding after the last frame of a short utterance, training has padding there.

A voice preset (`voice.VoicePreset`, Bark's history prompt) goes where generation puts it, in every layout that is
given one: its semantic ids are the semantic model's history; its semantic ids and coarse tokens, trimmed as
transformers' `BarkCoarseModel.preprocess_histories` trims them (`coarse_history`), come before the utterance's in
the coarse windows; its last `max_fine_history_length` frames come before the utterance's in the fine windows. Only
the utterance's own tokens are scored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from speechtrain.layers.labels import IGNORE_INDEX
from speechtrain.models.bark.config import BarkGenerationConfig

if TYPE_CHECKING:
    from speechtrain.models.bark.voice import VoicePreset

DEFAULTS = BarkGenerationConfig()


def _check_ids(ids: Sequence[int], upper: int, what: str) -> None:
    bad = [value for value in ids if not 0 <= value < upper]
    if bad:
        raise ValueError(f"{what} must be in [0, {upper}), got {bad[:5]}")


def pad_sequences(sequences: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """Right-pads lists of ids to one `[batch, longest]` LongTensor."""
    longest = max(len(sequence) for sequence in sequences)
    return torch.tensor([list(sequence) + [value] * (longest - len(sequence)) for sequence in sequences])


# Semantic ------------------------------------------------------------------------------------------------------


def semantic_prompt(text_ids: Sequence[int], history: Sequence[int] | None = None,
                    config: BarkGenerationConfig = DEFAULTS) -> list[int]:
    """The 2 * 256 + 1 ids that precede the semantic tokens: offset text, semantic history, infer token."""
    semantic = config.semantic
    context = semantic.max_input_semantic_length
    text = [token + semantic.text_encoding_offset for token in list(text_ids)[:context]]
    text += [semantic.text_pad_token] * (context - len(text))
    past = list(history or [])[-context:]
    past += [semantic.semantic_pad_token] * (context - len(past))
    return text + past + [semantic.semantic_infer_token]


def semantic_example(text_ids: Sequence[int], semantic_ids: Sequence[int], history: Sequence[int] | None = None,
                     block_size: int = 1024, config: BarkGenerationConfig = DEFAULTS) -> tuple[list[int], list[int]]:
    """`(input_ids, labels)`: `input_ids` are `semantic_prompt` + the semantic ids (513 + n, before merging),
    `labels` (256 + 1 + n, aligned with the merged positions) are -100 on the text/history positions, then the
    semantic ids and the end token. Targets longer than `block_size` allows are cut (and then have no end
    token, as the utterance goes on)."""
    semantic = config.semantic
    _check_ids(semantic_ids, semantic.semantic_vocab_size, "semantic ids")
    _check_ids(history or [], semantic.semantic_vocab_size + 1, "semantic history ids")
    context = semantic.max_input_semantic_length
    stream = (list(semantic_ids) + [semantic.eos_token_id])[: block_size - context]
    input_ids = semantic_prompt(text_ids, history, config) + stream[:-1]
    labels = [IGNORE_INDEX] * context + stream
    return input_ids, labels


def semantic_batch(examples: Sequence[tuple[list[int], list[int]]],
                   config: BarkGenerationConfig = DEFAULTS) -> dict[str, torch.Tensor]:
    """Right-padded batch of `semantic_example`s: `input_ids` `[B, 256 + T]` (for `embed_merged_context`),
    `labels` and `attention_mask` `[B, T]` (merged positions; padding is never scored)."""
    input_ids = pad_sequences([ids for ids, _ in examples], config.semantic.semantic_pad_token)
    labels = pad_sequences([labels for _, labels in examples], IGNORE_INDEX)
    attention_mask = pad_sequences([[1] * len(labels) for _, labels in examples], 0)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


# Coarse --------------------------------------------------------------------------------------------------------


def interleave_coarse(codes: torch.Tensor | Sequence[Sequence[int]],
                      config: BarkGenerationConfig = DEFAULTS) -> list[int]:
    """`[n_coarse_codebooks, frames]` codec codes -> the coarse model's flat ids, frame by frame, each codebook
    shifted to its own id range."""
    codes = torch.as_tensor(codes)
    coarse = config.coarse
    if codes.dim() != 2 or codes.shape[0] != coarse.n_coarse_codebooks:
        raise ValueError(f"coarse codes must be [{coarse.n_coarse_codebooks}, frames], got {tuple(codes.shape)}")
    _check_ids(codes.flatten().tolist(), coarse.codebook_size, "coarse codes")
    offsets = torch.tensor([config.coarse_offset(book) for book in range(coarse.n_coarse_codebooks)])
    return (codes + offsets[:, None]).T.flatten().tolist()


def coarse_prompt(semantic_ids: Sequence[int], coarse_tokens: Sequence[int], start: int,
                  config: BarkGenerationConfig = DEFAULTS, n_semantic_history: int = 0,
                  n_coarse_history: int = 0) -> list[int]:
    """The ids a coarse window starts from when `start` new coarse tokens exist: the semantic window
    (`max_semantic_history` before the position, `max_coarse_input_length` long, padded), the infer token and
    the last `max_coarse_history` coarse tokens before it. `semantic_ids` and `coarse_tokens` begin with a voice
    preset's `n_semantic_history` and `n_coarse_history` (`coarse_history`), which count before the position."""
    coarse = config.coarse
    semantic_idx = n_semantic_history + int(round(start / config.semantic_to_coarse_ratio))
    window = list(semantic_ids)[max(0, semantic_idx - config.max_semantic_history):][: coarse.max_coarse_input_length]
    window += [coarse.coarse_semantic_pad_token] * (coarse.max_coarse_input_length - len(window))
    history = list(coarse_tokens)[: n_coarse_history + start][-coarse.max_coarse_history:]
    return window + [coarse.coarse_infer_token] + history


def coarse_history(voice: VoicePreset | None, config: BarkGenerationConfig = DEFAULTS) -> tuple[list[int], list[int]]:
    """(semantic ids, flat coarse tokens) of a voice preset as the coarse windows continue from them, trimmed as
    transformers' `preprocess_histories` trims them: at most `max_semantic_history` semantic ids (an even number,
    no more than the coarse tokens cover), the coarse tokens of as many semantic ids, less the last two (suno-ai/bark's
    shift for time alignment). Empty lists without a preset."""
    if voice is None:
        return [], []
    ratio = config.semantic_to_coarse_ratio
    semantic = voice.semantic_prompt.tolist()
    tokens = interleave_coarse(voice.coarse_prompt, config)
    n_semantic = min(config.max_semantic_history, len(semantic) - len(semantic) % 2,
                     int(math.floor(len(tokens) / ratio)))
    n_coarse = int(round(n_semantic * ratio))
    if n_semantic == 0:
        return [], []
    return semantic[-n_semantic:], tokens[-n_coarse:][:-2]


def coarse_semantic_ids(semantic_ids: Sequence[int], config: BarkGenerationConfig = DEFAULTS) -> list[int]:
    """Semantic ids as the coarse model reads them: the semantic end/pad token becomes the coarse semantic pad."""
    pad = config.semantic.semantic_pad_token
    return [config.coarse.coarse_semantic_pad_token if token == pad else token for token in semantic_ids]


def coarse_windows(semantic_ids: Sequence[int], coarse_codes: torch.Tensor | Sequence[Sequence[int]],
                   config: BarkGenerationConfig = DEFAULTS,
                   voice: VoicePreset | None = None) -> list[tuple[list[int], list[int]]]:
    """`(input_ids, labels)` for every generation window over an utterance: `semantic_ids` and its codec codes
    `[n_coarse_codebooks, frames]`, after a `voice` preset's history when given. Window `w` starts at the
    utterance's coarse token `w * sliding_window_len`; its labels score the window's new tokens only (-100 on the
    prompt, history included)."""
    semantic_history, token_history = coarse_history(voice, config)
    semantic = semantic_history + coarse_semantic_ids(semantic_ids, config)
    _check_ids(semantic, config.coarse.coarse_semantic_pad_token + 1, "semantic ids")
    flat = interleave_coarse(coarse_codes, config)
    tokens = token_history + flat
    step = config.coarse.sliding_window_len
    windows = []
    for start in range(0, len(flat), step):
        prompt = coarse_prompt(semantic, tokens, start, config, len(semantic_history), len(token_history))
        targets = flat[start : start + step]
        windows.append((prompt + targets[:-1], [IGNORE_INDEX] * (len(prompt) - 1) + targets))
    return windows


def coarse_batch(examples: Sequence[tuple[list[int], list[int]]],
                 config: BarkGenerationConfig = DEFAULTS) -> dict[str, torch.Tensor]:
    """Right-padded batch of coarse windows: `input_ids`, `labels`, `attention_mask`, all `[B, T]`."""
    input_ids = pad_sequences([ids for ids, _ in examples], config.coarse.coarse_semantic_pad_token)
    labels = pad_sequences([labels for _, labels in examples], IGNORE_INDEX)
    attention_mask = pad_sequences([[1] * len(ids) for ids, _ in examples], 0)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


# Fine ----------------------------------------------------------------------------------------------------------


def fine_spans(n_frames: int, n_history: int = 0,
               config: BarkGenerationConfig = DEFAULTS) -> list[tuple[int, int, int]]:
    """`(start, new_from, new_to)` of each window over `n_history + n_frames` frames (padded to at least one window):
    the window is `[start, start + max_fine_input_length)`, placed as Bark's loop places it, and predicts its
    frames `[new_from, new_to)` (relative to `start`, up to the last frame), which no earlier window predicted."""
    fine = config.fine
    window, hop = fine.max_fine_input_length, fine.max_fine_history_length
    total = n_history + n_frames
    n_loops = max(0, math.ceil((n_frames - (window - n_history)) / hop)) + 1
    spans, covered = [], n_history
    for loop in range(n_loops):
        start = min(loop * hop, max(total, window) - window)
        new_to = min(start + window, total) - start
        if covered - start < new_to:
            spans.append((start, covered - start, new_to))
        covered = max(covered, start + new_to)
    return spans


@dataclass(frozen=True)
class FineWindow:
    """One window of codes `[max_fine_input_length, n_fine_codebooks]` (CODEBOOK_SIZE after the last frame) that
    starts at frame `start` of the utterance, whose frames `[new_from, new_to)` generation predicts here first."""

    codes: torch.Tensor
    start: int
    new_from: int
    new_to: int


def fine_windows(codes: torch.Tensor, n_history: int = 0, config: BarkGenerationConfig = DEFAULTS) -> list[FineWindow]:
    """The windows of an utterance's codec codes `[frames, n_fine_codebooks]`, whose first `n_history` frames
    are a given prompt (at most `max_fine_history_length`), in generation's order (`fine_spans`)."""
    fine = config.fine
    if codes.dim() != 2 or codes.shape[1] != fine.n_fine_codebooks:
        raise ValueError(f"fine codes must be [frames, {fine.n_fine_codebooks}], got {tuple(codes.shape)}")
    if not 0 <= n_history <= min(fine.max_fine_history_length, codes.shape[0]):
        raise ValueError(f"n_history={n_history} must be in [0, {fine.max_fine_history_length}] and at most the "
                         f"{codes.shape[0]} frames")
    _check_ids(codes.flatten().tolist(), fine.codebook_size, "fine codes")
    frames, window = codes.shape[0], fine.max_fine_input_length
    padded = torch.full((max(frames, window), fine.n_fine_codebooks), fine.codebook_size, dtype=torch.long)
    padded[:frames] = codes
    return [FineWindow(padded[start : start + window], start, new_from, new_to)
            for start, new_from, new_to in fine_spans(frames - n_history, n_history, config)]


def fine_history(voice: VoicePreset | None, config: BarkGenerationConfig = DEFAULTS) -> torch.Tensor:
    """The frames `[n_history, n_fine_codebooks]` a voice preset puts before an utterance's in the fine windows: its
    last `max_fine_history_length` (0 frames without a preset)."""
    if voice is None:
        return torch.zeros(0, config.fine.n_fine_codebooks, dtype=torch.long)
    return voice.fine_prompt.T[-config.fine.max_fine_history_length :].long()  # [8, T_f] -> [n_history, 8]


def fine_windows_after(codes: torch.Tensor, voice: VoicePreset | None = None,
                       config: BarkGenerationConfig = DEFAULTS) -> list[FineWindow]:
    """The fine windows of an utterance's codes `[frames, n_fine_codebooks]` after a voice preset's frames
    (`fine_history`), as generation with that preset places them; only the utterance's frames are predicted."""
    history = fine_history(voice, config)
    return fine_windows(torch.cat([history, codes.long()]), len(history), config)


def fine_example(window: FineWindow, codebook_idx: int,
                 config: BarkGenerationConfig = DEFAULTS) -> tuple[torch.Tensor, torch.Tensor]:
    """`(input_ids [window, n_fine_codebooks], labels [window])` for predicting `codebook_idx` over the window."""
    if not config.coarse.n_coarse_codebooks <= codebook_idx < config.fine.n_fine_codebooks:
        raise ValueError(f"codebook_idx={codebook_idx} is not a fine codebook "
                         f"[{config.coarse.n_coarse_codebooks}, {config.fine.n_fine_codebooks})")
    input_ids = window.codes.clone()
    input_ids[window.new_from :, codebook_idx:] = config.fine.codebook_size
    labels = torch.full((input_ids.shape[0],), IGNORE_INDEX, dtype=torch.long)
    labels[window.new_from : window.new_to] = window.codes[window.new_from : window.new_to, codebook_idx]
    return input_ids, labels


def fine_batch(windows: Sequence[FineWindow], codebook_indices: Sequence[int],
               config: BarkGenerationConfig = DEFAULTS) -> dict[str, torch.Tensor]:
    """`input_ids` `[B, window, n_fine_codebooks]`, `labels` `[B, window]` and `codebook_idx` `[B]` (one target
    codebook per window; `BarkFineModel.forward` accepts the tensor)."""
    if len(windows) != len(codebook_indices):
        raise ValueError(f"{len(windows)} windows but {len(codebook_indices)} codebook indices")
    examples = [fine_example(window, index, config) for window, index in zip(windows, codebook_indices)]
    return {"input_ids": torch.stack([ids for ids, _ in examples]),
            "labels": torch.stack([labels for _, labels in examples]),
            "codebook_idx": torch.tensor(list(codebook_indices))}
