"""Batches for Bark's three sub-models from tokenized utterances (`speechtrain.data.token_shards`).

The collators only pick tokens from each `TokenizedUtterance` and hand them to `models/bark/layouts.py`, whose
prompt builders are the ones generation calls, so training inputs are what the models see when generating.
Labels are -100 wherever nothing is scored (prompts, padding).

Batch keys and shapes (B = batch rows, which are windows for coarse and fine, not utterances):

- `BarkSemanticCollator` (one row per utterance):
    input_ids       Long [B, 256 + T]  offset text (256), semantic history (256), infer token, semantic ids;
                                       for `BarkCausalModel.embed_merged_context`, which merges the first 512
    labels          Long [B, T]        -100 on the 256 merged context positions, then the semantic ids and the
                                       end token; -100 on padding
    attention_mask  Long [B, T]        1 on real (merged) positions, 0 on padding
- `BarkCoarseCollator` (one row per generation window of `sliding_window_len` coarse tokens):
    input_ids       Long [B, T]        256 semantic ids, infer token, up to 630 earlier coarse tokens, the window
    labels          Long [B, T]        the window's coarse tokens (interleaved codebooks 0/1, offset), -100 elsewhere
    attention_mask  Long [B, T]
- `BarkFineCollator` (one row per 1024-frame window, one drawn target codebook each):
    input_ids       Long [B, 1024, 8]  codes; the target codebook and those above it are 1024 on the frames the
                                       window predicts, and padding frames are 1024
    labels          Long [B, 1024]     the target codebook's codes on those frames, -100 elsewhere
    codebook_idx    Long [B]           target codebook in [2, 8)
- all: `ids` list[str] (the utterance of each row), `texts` list[str].

With a voice preset (`voice`, Bark's history prompt), every row continues from it as generation with that preset
does (`layouts.py`): the semantic history is its semantic ids, the coarse windows start after its trimmed history,
the fine windows after its last 512 frames. Only the utterance's tokens are scored.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from speechtrain.data.token_data import TokenDataModule, utterance_generator
from speechtrain.data.token_shards import INFO_FILE, TokenizedUtterance, read_token_info
from speechtrain.errors import ConfigError, DataError
from speechtrain.models.bark.config import MODEL_TYPES, BarkGenerationConfig
from speechtrain.models.bark.layouts import (
    DEFAULTS,
    coarse_batch,
    coarse_windows,
    fine_batch,
    fine_windows_after,
    semantic_batch,
    semantic_example,
)
from speechtrain.models.bark.voice import VoicePreset, load_voice

SEMANTIC_RATE_TOLERANCE = 0.02  # relative: HuBERT frames are 50 Hz, Bark's semantic tokens 49.9 Hz


def _check_not_empty(utterances: Sequence[TokenizedUtterance], name: str) -> None:
    if not utterances:
        raise ValueError(f"{name} got an empty batch")


def _choose(items: list, count: int | None, generator: torch.Generator | None) -> list:
    """`count` of `items` drawn without replacement, in their order (all of them when `count` is None)."""
    if count is None or len(items) <= count:
        return items
    keep = sorted(torch.randperm(len(items), generator=generator)[:count].tolist())
    return [items[index] for index in keep]


def _generator(seed: int | None) -> torch.Generator | None:
    """None draws from torch's global generator (seeded per DataLoader worker by Lightning)."""
    return None if seed is None else torch.Generator().manual_seed(seed)


class BarkSemanticCollator:
    """Text + semantic ids -> semantic-model batches. `tokenizer.encode(text)` gives the BERT ids (no [CLS]/[SEP]);
    targets longer than `block_size - 256` are cut. The semantic history is the `voice` preset's semantic ids, or
    none (as generation without a prompt)."""

    def __init__(self, tokenizer: Any, block_size: int = 1024, config: BarkGenerationConfig = DEFAULTS,
                 voice: VoicePreset | None = None):
        semantic = config.semantic
        room = semantic.text_pad_token - semantic.text_encoding_offset
        if tokenizer is None:
            raise ConfigError("the semantic model's batches need the text tokenizer (tokenizer: bark_text)")
        if len(tokenizer) > room:
            raise ConfigError(f"the text tokenizer has {len(tokenizer)} tokens, but Bark's semantic input holds "
                             f"{room} text ids ({semantic.text_encoding_offset} to {semantic.text_pad_token})")
        if block_size <= semantic.max_input_semantic_length + 1:
            raise ConfigError(f"block_size={block_size} leaves no room for semantic tokens after the "
                             f"{semantic.max_input_semantic_length + 1} merged prompt positions")
        self.tokenizer, self.block_size, self.config = tokenizer, block_size, config
        self.history = None if voice is None else voice.semantic_prompt.tolist()

    def __call__(self, utterances: list[TokenizedUtterance]) -> dict[str, Any]:
        _check_not_empty(utterances, "BarkSemanticCollator")
        examples = [semantic_example(self.tokenizer.encode(u.text), u.semantic.tolist(), self.history,
                                     self.block_size, self.config) for u in utterances]
        return {**semantic_batch(examples, self.config), "ids": [u.id for u in utterances],
                "texts": [u.text for u in utterances]}


class _WindowCollator:
    """Rows = generation windows of each utterance; `windows_per_utterance` keeps that many of each, drawn at random
    (None: all), to bound the batch; draws come from `seed`'s generator, or torch's global one when `seed` is None,
    and in the `for_validation()` copy from each utterance's id, so that every validation pass sees the same rows."""

    fixed_draws = False

    def __init__(self, windows_per_utterance: int | None = None, seed: int | None = None,
                 config: BarkGenerationConfig = DEFAULTS, voice: VoicePreset | None = None):
        if windows_per_utterance is not None and windows_per_utterance < 1:
            raise ConfigError(f"windows_per_utterance must be at least 1 or None, got {windows_per_utterance}")
        self.windows_per_utterance, self.config, self.voice = windows_per_utterance, config, voice
        self.generator = _generator(seed)

    def for_validation(self) -> _WindowCollator:
        validation = copy.copy(self)
        validation.fixed_draws = True
        return validation

    def _draws(self, utterance_id: str, stream: int = 0) -> torch.Generator | None:
        """The generator of one utterance's draws (`stream` tells its draws apart) under `fixed_draws`."""
        return utterance_generator(utterance_id, stream) if self.fixed_draws else self.generator

    def _windows(self, utterances: list[TokenizedUtterance], windows_of: Callable[[TokenizedUtterance], list]
                 ) -> tuple[list, list[str]]:
        """(the chosen windows of every utterance, the utterance id of each)."""
        _check_not_empty(utterances, type(self).__name__)
        rows, ids = [], []
        for u in utterances:
            chosen = _choose(windows_of(u), self.windows_per_utterance, self._draws(u.id))
            rows += chosen
            ids += [u.id] * len(chosen)
        return rows, ids


class BarkCoarseCollator(_WindowCollator):
    """Semantic ids + the first 2 codebooks -> one row per coarse generation window (`layouts.coarse_windows`)."""

    def __call__(self, utterances: list[TokenizedUtterance]) -> dict[str, Any]:
        books = self.config.coarse.n_coarse_codebooks
        rows, ids = self._windows(
            utterances,
            lambda u: coarse_windows(u.semantic.tolist(), u.acoustic[:, :books].T, self.config, self.voice))
        return {**coarse_batch(rows, self.config), "ids": ids, "texts": [u.text for u in utterances]}


class BarkFineCollator(_WindowCollator):
    """All 8 codebooks -> one row per fine generation window (`layouts.fine_windows`), each with a target codebook
    drawn uniformly from the fine ones (2..7)."""

    def __init__(self, seed: int | None = None, windows_per_utterance: int | None = None,
                 config: BarkGenerationConfig = DEFAULTS, voice: VoicePreset | None = None):
        super().__init__(windows_per_utterance, seed, config, voice)

    def __call__(self, utterances: list[TokenizedUtterance]) -> dict[str, Any]:
        books = self.config.fine.n_fine_codebooks
        windows, ids = self._windows(utterances,
                                     lambda u: fine_windows_after(u.acoustic[:, :books], self.voice, self.config))
        first = self.config.coarse.n_coarse_codebooks
        if self.fixed_draws:  # each utterance's targets from its id, whatever else the batch holds
            targets = [target for utterance_id, rows in itertools.groupby(ids)
                       for target in torch.randint(first, books, (len(list(rows)),),
                                                   generator=self._draws(utterance_id, 1)).tolist()]
        else:
            targets = torch.randint(first, books, (len(windows),), generator=self.generator).tolist()
        return {**fine_batch(windows, targets, self.config), "ids": ids, "texts": [u.text for u in utterances]}


def check_token_info(info: Mapping[str, Any], kind: str, where: str | Path = "tokens.json",
                     config: BarkGenerationConfig = DEFAULTS) -> None:
    """Refuses tokens that Bark's `kind` model cannot read: the acoustic models need 24 kHz EnCodec codes with at
    least `n_fine_codebooks` (8) codebooks of `codebook_size` (1024) at 75 frames/s; the semantic and coarse models
    need at most `semantic_vocab_size` (10 000) semantic ids at about 50 frames/s."""
    problems = []
    if kind in ("coarse_acoustics", "fine_acoustics"):
        codec = info["codec"]
        if codec.get("codebook_size") != config.fine.codebook_size:
            problems.append(f"codec.codebook_size is {codec.get('codebook_size')}, Bark's codebooks have "
                            f"{config.fine.codebook_size} entries")
        if codec.get("num_levels", 0) < config.fine.n_fine_codebooks:
            problems.append(f"codec.num_levels is {codec.get('num_levels')}, Bark needs {config.fine.n_fine_codebooks} "
                            "codebooks (EnCodec 24 kHz at 6 kbps)")
        if not math.isclose(codec.get("frame_rate", 0), config.coarse.coarse_rate_hz):
            problems.append(f"codec.frame_rate is {codec.get('frame_rate')}, Bark's codes are "
                            f"{config.coarse.coarse_rate_hz} frames/s (EnCodec 24 kHz)")
    if kind in ("semantic", "coarse_acoustics"):
        semantic = info["semantic"]
        if semantic.get("num_clusters", math.inf) > config.semantic.semantic_vocab_size:
            problems.append(f"semantic.num_clusters is {semantic.get('num_clusters')}, Bark's semantic vocabulary "
                            f"has {config.semantic.semantic_vocab_size} ids")
        rate = semantic.get("frame_rate", 0)
        if not math.isclose(rate, config.semantic.semantic_rate_hz, rel_tol=SEMANTIC_RATE_TOLERANCE):
            problems.append(f"semantic.frame_rate is {rate}, Bark's semantic tokens are "
                            f"{config.semantic.semantic_rate_hz} frames/s")
    if problems:
        raise DataError(f"{where}: these tokens do not fit Bark's {kind} model: {'; '.join(problems)}; "
                         "tokenize with speechtrain-tokenize at its defaults (EnCodec 24 kHz, 6 kbps; HuBERT)")


def bark_compatible_semantic_ids(info: Mapping[str, Any]) -> bool:
    """Whether tokens.json says its semantic ids are Bark's own (`semantic.bark_compatible`, written by a
    Bark-compatible semantic tokenizer); speechtrain's HuBERT k-means ids are not."""
    return info.get("semantic", {}).get("bark_compatible") is True


def check_semantic_ids_for_pretrained(info: Mapping[str, Any], kind: str, where: str | Path,
                                      allow_foreign_semantic_ids: bool = False) -> None:
    """A pretrained Bark semantic or coarse model reads semantic ids as the ones it was trained on: fine-tuning it on
    ids from another tokenizer (the own k-means) trains on garbage unless meant. The fine model reads no semantic
    ids, and a model trained from scratch learns whatever ids it is given."""
    if kind not in ("semantic", "coarse_acoustics") or allow_foreign_semantic_ids or bark_compatible_semantic_ids(info):
        return
    semantic = info.get("semantic", {})
    made_by = f"{semantic.get('name', 'an unknown tokenizer')} with {semantic.get('num_clusters', '?')}-cluster k-means"
    raise DataError(
        f"{where}: its semantic ids come from {made_by}, not from Bark's semantic tokenizer, so they mean nothing "
        f"to the pretrained Bark {kind} model (model.pretrained). Tokenize the corpus with a Bark-compatible "
        "semantic tokenizer, or set data.allow_foreign_semantic_ids=true to fine-tune on these ids anyway (the model "
        "then has to relearn what every semantic id means)")


def bark_collator(kind: str, tokenizer: Any = None, block_size: int = 1024,
                  windows_per_utterance: int | None = None, seed: int | None = None,
                  config: BarkGenerationConfig = DEFAULTS,
                  voice: VoicePreset | None = None) -> Callable[[list[TokenizedUtterance]], dict[str, Any]]:
    """The collator of sub-model `kind` (`semantic`, `coarse_acoustics`, `fine_acoustics`), its rows after the
    `voice` preset when given."""
    if kind == "semantic":
        return BarkSemanticCollator(tokenizer, block_size, config, voice)
    if kind == "coarse_acoustics":
        return BarkCoarseCollator(windows_per_utterance, seed, config, voice)
    if kind == "fine_acoustics":
        return BarkFineCollator(seed, windows_per_utterance, config, voice)
    raise ConfigError(f"Bark data: kind={kind!r} is not one of {MODEL_TYPES}")


class BarkTokenDataModule(TokenDataModule):
    """`TokenDataModule` with the collator of Bark's sub-model `kind`, checking after `setup` that the tokens fit
    it (`check_token_info`) and, when the model is `pretrained`, that a semantic or coarse model gets Bark's own
    semantic ids (`check_semantic_ids_for_pretrained`). Takes the entry point's `tokenizer` (used by the semantic
    kind only). `voice_preset` (an `.npz`) is the history prompt every row continues from."""

    def __init__(self, tokens_dir: str | Path, kind: str, max_batch_seconds: float, tokenizer: Any = None,
                 block_size: int = 1024, windows_per_utterance: int | None = None, pretrained: str | None = None,
                 allow_foreign_semantic_ids: bool = False, voice_preset: str | Path | None = None, **options: Any):
        voice = None if voice_preset is None else load_voice(voice_preset)
        super().__init__(tokens_dir, bark_collator(kind, tokenizer, block_size, windows_per_utterance, voice=voice),
                         max_batch_seconds, **options)
        self.kind, self.pretrained, self.allow_foreign_semantic_ids = kind, pretrained, allow_foreign_semantic_ids

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is None:  # before reading every shard
            info, where = read_token_info(self.tokens_dir), self.tokens_dir / INFO_FILE
            check_token_info(info, self.kind, where)
            if self.pretrained is not None:
                check_semantic_ids_for_pretrained(info, self.kind, where, self.allow_foreign_semantic_ids)
        super().setup(stage)
