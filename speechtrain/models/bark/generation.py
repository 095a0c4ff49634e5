"""Bark's generation with our models: text -> semantic tokens -> coarse tokens (2 codebooks) -> fine tokens
(8 codebooks) -> waveform through a codec. It follows transformers' `BarkSemanticModel/BarkCoarseModel/
BarkFineModel.generate` (which follow suno-ai/bark), with the prompts built by `layouts.py`, so greedy decoding
gives transformers' tokens up to one 1024-frame fine window. Past it, each fine frame is predicted once, where
training scores it, rather than re-predicted in the next window's overlap and kept from there (see `layouts.py`).

Sampling: `temperature=None` is greedy; otherwise logits outside the allowed range are removed, then `top_k`,
then the temperature, as suno-ai/bark does. Two choices differ from transformers: the second coarse codebook may
only pick its own 1024 ids (transformers also allows the ids after it; suno-ai/bark does not), and the fine model
samples whenever a temperature is given (transformers treats 1.0 as greedy).

A voice preset (`voice.VoicePreset`, Bark's `history_prompt`) conditions every stage, placed as transformers places
it (`layouts.coarse_history`, `layouts.fine_history`); the same placement is available to training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from speechtrain.models.bark.config import BarkGenerationConfig
from speechtrain.models.bark.layouts import (
    DEFAULTS,
    coarse_history,
    coarse_prompt,
    fine_history,
    fine_spans,
    semantic_prompt,
)
from speechtrain.models.bark.modeling import BarkCausalModel, BarkFineModel
from speechtrain.models.bark.voice import VoicePreset


class Codec(Protocol):
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Long codes `[frames, n_codebooks]` -> waveform."""


def _pick(scores: torch.Tensor, temperature: float | None, top_k: int | None,
          generator: torch.Generator | None) -> torch.Tensor:
    """Next ids `[B]` from float scores `[B, V]` (disallowed ids already at -inf)."""
    if temperature is None:
        return scores.argmax(dim=-1)
    if top_k is not None:
        kth = scores.topk(min(top_k, scores.shape[-1]), dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = (scores / temperature).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _check_vocab(model: BarkCausalModel, top_input_id: int, top_output_id: int, stage: str) -> None:
    config = model.config
    if config.input_vocab_size <= top_input_id or config.output_vocab_size <= top_output_id:
        raise ValueError(f"the {stage} model's vocabularies (input {config.input_vocab_size}, output "
                         f"{config.output_vocab_size}) do not hold Bark's {stage} token ids (up to input id "
                         f"{top_input_id}, output id {top_output_id})")


@torch.no_grad()
def generate_semantic(
    model: BarkCausalModel,
    text_ids: Sequence[Sequence[int]],
    history: Sequence[int] | None = None,
    config: BarkGenerationConfig = DEFAULTS,
    max_new_tokens: int | None = None,
    min_eos_p: float | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Semantic ids `[B, steps]` for a batch of tokenized texts (unpadded; the first 256 tokens are used), as
    transformers returns them: a row stops at the end token (kept), then repeats it. `min_eos_p` (default
    the config's) forces the end token once its probability exceeds it."""
    semantic = config.semantic
    _check_vocab(model, semantic.semantic_infer_token, semantic.semantic_pad_token, "semantic")
    max_new_tokens = max_new_tokens or semantic.max_new_tokens
    min_eos_p = semantic.min_eos_p if min_eos_p is None else min_eos_p
    eos = semantic.eos_token_id
    device = model.lm_head.weight.device
    prompts = torch.tensor([semantic_prompt(ids, history, config) for ids in text_ids], device=device)  # [B, 513]
    token_ids = torch.arange(model.config.output_vocab_size, device=device)
    allowed = (token_ids < semantic.semantic_vocab_size) | (token_ids == eos)
    finished = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    generated, cache, next_ids = [], None, None
    for _ in tqdm(range(max_new_tokens), desc="semantic tokens", disable=not progress):
        if cache is None:
            logits, cache = model(input_embeds=model.embed_merged_context(prompts, semantic.max_input_semantic_length))
        else:
            logits, cache = model(next_ids[:, None], past=cache)
        scores = logits[:, -1].float().masked_fill(~allowed, float("-inf"))
        if min_eos_p is not None:
            scaled = scores if temperature is None else scores / temperature
            stop = scaled.softmax(dim=-1)[:, eos] > min_eos_p  # then only the end token is left
            scores = torch.where(stop[:, None] & (token_ids != eos), float("-inf"), scores)
        next_ids = _pick(scores, temperature, top_k, generator).masked_fill(finished, eos)
        generated.append(next_ids)
        finished |= next_ids == eos
        if bool(finished.all()):
            break
    return torch.stack(generated, dim=1)


@torch.no_grad()
def generate_coarse(
    model: BarkCausalModel,
    semantic_ids: torch.Tensor,
    config: BarkGenerationConfig = DEFAULTS,
    temperature: float | None = None,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    voice: VoicePreset | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coarse ids `[B, steps]` (both codebooks interleaved, with their offsets, as transformers returns them) and
    each row's length `[B]`, from `generate_semantic`'s output. Windows of `sliding_window_len` tokens, each
    started afresh (new KV cache) from `layouts.coarse_prompt`, after the `voice` preset's history when given."""
    coarse = config.coarse
    _check_vocab(model, coarse.coarse_infer_token, config.coarse_offset(coarse.n_coarse_codebooks) - 1, "coarse")
    device = model.lm_head.weight.device
    semantic_rows = semantic_ids.masked_fill(semantic_ids == config.semantic.semantic_pad_token,
                                             coarse.coarse_semantic_pad_token).tolist()
    ratio, books = config.semantic_to_coarse_ratio, coarse.n_coarse_codebooks
    lengths = torch.tensor([round(math.floor(sum(token != coarse.coarse_semantic_pad_token for token in row)
                                             * ratio / books) * books) for row in semantic_rows])
    total = int(lengths.max())
    semantic_history, token_history = coarse_history(voice, config)
    semantic_rows = [semantic_history + row for row in semantic_rows]
    ranges = torch.arange(model.config.output_vocab_size, device=device)
    allowed = [(ranges >= config.coarse_offset(book)) & (ranges < config.coarse_offset(book + 1))
               for book in range(books)]
    generated = torch.zeros(len(semantic_rows), 0, dtype=torch.long, device=device)
    for start in tqdm(range(0, total, coarse.sliding_window_len), desc="coarse windows", disable=not progress):
        step_ids = torch.tensor([coarse_prompt(row, token_history + past, start, config, len(semantic_history),
                                               len(token_history))
                                 for row, past in zip(semantic_rows, generated.tolist())], device=device)
        cache = None
        for step in range(min(coarse.sliding_window_len, total - start)):
            logits, cache = model(step_ids, past=cache)
            scores = logits[:, -1].float().masked_fill(~allowed[step % books], float("-inf"))
            next_ids = _pick(scores, temperature, top_k, generator)
            generated = torch.cat([generated, next_ids[:, None]], dim=1)
            step_ids = next_ids[:, None]
    return generated, lengths


@torch.no_grad()
def generate_fine(
    model: BarkFineModel,
    coarse_ids: torch.Tensor,
    config: BarkGenerationConfig = DEFAULTS,
    temperature: float | None = None,
    generator: torch.Generator | None = None,
    voice: VoicePreset | None = None,
) -> torch.Tensor:
    """All codebooks `[B, n_fine_codebooks, frames]` (codes in [0, codebook_size)) from `generate_coarse`'s ids,
    window by window (`layouts.fine_spans`), codebook by codebook, after the `voice` preset's frames when given.
    Each frame is predicted once, in the first window that holds it, with the earlier windows' predictions as
    context: the positions training scores."""
    fine, books = config.fine, config.coarse.n_coarse_codebooks
    batch = coarse_ids.shape[0]
    coarse = torch.remainder(coarse_ids.view(batch, -1, books) - config.semantic.semantic_vocab_size,
                             fine.codebook_size)  # [B, frames * n_coarse] -> [B, frames, n_coarse]
    frames = coarse.shape[1]
    history = fine_history(voice, config).to(coarse.device)  # [n_history, n_fine]
    n_history = len(history)
    codes = F.pad(coarse, (0, fine.n_fine_codebooks - books), value=fine.codebook_size)  # [B, frames, n_fine]
    codes = torch.cat([history.expand(batch, -1, -1), codes], dim=1)  # [B, n_history + frames, n_fine]
    codes = F.pad(codes, (0, 0, 0, max(0, fine.max_fine_input_length - n_history - frames)), value=fine.codebook_size)
    window = fine.max_fine_input_length
    for start, first, _ in fine_spans(frames, n_history, config):
        buffer = codes[:, start : start + window].clone()  # [B, window, n_fine]
        for book in range(books, fine.n_fine_codebooks):
            logits = model(book, buffer)[:, first:, : fine.codebook_size].float()  # [B, window - first, codebook]
            if temperature is None:
                predicted = logits.argmax(dim=-1)
            else:
                probs = (logits / temperature).softmax(dim=-1).reshape(-1, fine.codebook_size)
                predicted = torch.multinomial(probs, 1, generator=generator).view(batch, -1)
            buffer[:, first:, book] = predicted
        codes[:, start + first : start + window, books:] = buffer[:, first:, books:]
    return codes[:, n_history : n_history + frames].transpose(1, 2)


@torch.no_grad()
def generate_audio(
    text: str | Sequence[str],
    tokenizer: Any,
    semantic: BarkCausalModel,
    coarse: BarkCausalModel,
    fine: BarkFineModel,
    codec: Codec,
    config: BarkGenerationConfig = DEFAULTS,
    semantic_temperature: float | None = 0.7,
    coarse_temperature: float | None = 0.7,
    fine_temperature: float | None = 0.5,
    min_eos_p: float | None = 0.2,
    voice: VoicePreset | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> torch.Tensor | list[torch.Tensor]:
    """Waveform(s) for `text` (a string, or a list of them for a batch) through the three stages and the codec's
    `decode(codes [frames, n_codebooks])`, in the voice of the `voice` preset when given. The default temperatures
    and `min_eos_p` are suno-ai/bark's; pass None temperatures for greedy decoding."""
    texts = [text] if isinstance(text, str) else list(text)
    history = None if voice is None else voice.semantic_prompt.tolist()
    semantic_ids = generate_semantic(semantic, [tokenizer.encode(item) for item in texts], history, config,
                                     min_eos_p=min_eos_p, temperature=semantic_temperature, generator=generator,
                                     progress=progress)
    coarse_ids, lengths = generate_coarse(coarse, semantic_ids, config, coarse_temperature, generator=generator,
                                          progress=progress, voice=voice)
    codes = generate_fine(fine, coarse_ids, config, fine_temperature, generator, voice)  # [B, n_fine, frames]
    frames = (lengths // config.coarse.n_coarse_codebooks).tolist()
    waveforms = [codec.decode(row[:, :count].T.long()) for row, count in zip(codes, frames)]
    return waveforms[0] if isinstance(text, str) else waveforms
