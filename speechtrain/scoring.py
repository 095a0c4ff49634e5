"""Word and character error rates after a named text normaliser, shared by validation and `speechtrain-evaluate`.

A WER means something only beside its normaliser: published Whisper numbers are computed after Whisper's English
normaliser ("Mr." becomes "mister", "twenty-one" becomes "21", British spellings become American), so the same
name picks the same function everywhere and is recorded with every result:

- `basic`: lower case, NFKC, punctuation and symbols to spaces; apostrophes of contractions and combining marks
  (accents, the Devanagari virama) stay with their word. Whisper's own basic normaliser splits both.
- `whisper_english`: Whisper's English normaliser, from the `whisper-normalizer` package (openai/whisper's code).
- `whisper_basic`: Whisper's basic (language-independent) normaliser, from the same package.
- `none`: the texts as they are, only surrounding whitespace removed.

Synthesised speech is also compared with a recording of the same sentence by mel-cepstral distortion (MCD) after
dynamic time warping, in dB: `mel_cepstral_distortion`.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import asdict, astuple, dataclass, field
from functools import cache

import jiwer
import numpy as np
import torch
import torchaudio

from speechtrain.data.spectrogram import mel_spectrogram
from speechtrain.errors import ConfigError

_SPACES = re.compile(r"\s+")
# Combining marks (Mn, Mc, Me: virama, vowel signs, accents of decomposed text) belong to the letter before them.
_COMBINING_MARKS = ("Mn", "Mc", "Me")
NORMALIZERS = ("basic", "whisper_english", "whisper_basic", "none")


def _word_character(character: str) -> bool:
    return character.isalnum() or character == "'" or unicodedata.category(character) in _COMBINING_MARKS


def normalize_basic(text: str) -> str:
    """Lower-case, NFKC, punctuation and symbols to spaces (apostrophes and combining marks kept), collapsed
    whitespace: "Hello, world!" scores as a perfect match for "hello world", and 'नमस्ते' stays one word."""
    text = unicodedata.normalize("NFKC", text).lower().replace("’", "'")
    text = "".join(c if _word_character(c) else " " for c in text)
    text = re.sub(r"(^|\s)'+|'+(\s|$)", r"\1 \2", text)  # quotes, not contractions
    return _SPACES.sub(" ", text).strip()


@cache
def get_normalizer(name: str) -> Callable[[str], str]:
    """The normaliser called `name` (one of `NORMALIZERS`), each returning collapsed, stripped text."""
    if name == "basic":
        return normalize_basic
    if name == "none":
        return str.strip
    if name in ("whisper_english", "whisper_basic"):
        try:
            if name == "whisper_english":
                from whisper_normalizer.english import EnglishTextNormalizer as WhisperNormalizer
            else:
                from whisper_normalizer.basic import BasicTextNormalizer as WhisperNormalizer
        except ImportError as err:
            raise ConfigError(f"normalizer {name!r} needs the whisper-normalizer package: "
                              "pip install whisper-normalizer") from err
        whisper_normalize = WhisperNormalizer()
        return lambda text: _SPACES.sub(" ", whisper_normalize(text)).strip()
    raise ConfigError(f"unknown normalizer {name!r}; expected one of {list(NORMALIZERS)}")


@dataclass
class EditCounts:
    """Edits that turn references into hypotheses, over words or characters: they add up, rates do not."""

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    hits: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def reference_length(self) -> int:
        return self.substitutions + self.deletions + self.hits

    @property
    def rate(self) -> float:
        return self.errors / max(self.reference_length, 1)

    def __add__(self, other: EditCounts) -> EditCounts:
        return EditCounts(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


@dataclass
class ErrorCounts:
    """Word and character edits of one utterance or of a corpus."""

    words: EditCounts = field(default_factory=EditCounts)
    chars: EditCounts = field(default_factory=EditCounts)

    @property
    def wer(self) -> float:
        return self.words.rate

    @property
    def cer(self) -> float:
        return self.chars.rate

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(self.words + other.words, self.chars + other.chars)

    def as_dict(self) -> dict[str, float]:
        """Flat, for JSON: wer, cer, the word edits by kind, `words`, then the same with `char_` for characters."""
        return {"wer": self.wer, "cer": self.cer, **asdict(self.words), "words": self.words.reference_length,
                **{f"char_{key}": value for key, value in asdict(self.chars).items()},
                "chars": self.chars.reference_length}


def count_errors(references: Sequence[str], hypotheses: Sequence[str]) -> ErrorCounts:
    """Edits between already normalised texts (every reference non-empty); each pair is aligned on its own."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        return ErrorCounts()
    words = jiwer.process_words(list(references), list(hypotheses))
    chars = jiwer.process_characters(list(references), list(hypotheses))
    return ErrorCounts(EditCounts(words.substitutions, words.deletions, words.insertions, words.hits),
                       EditCounts(chars.substitutions, chars.deletions, chars.insertions, chars.hits))


def error_counts(references: Sequence[str], hypotheses: Sequence[str], normalizer: str = "basic") -> ErrorCounts:
    """Corpus edit counts after `normalizer`; pairs whose normalised reference is empty are left out (no word can
    be wrong in them), as `speechtrain-evaluate` skips and counts them."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    normalize = get_normalizer(normalizer)
    pairs = [(normalize(r), normalize(h)) for r, h in zip(references, hypotheses, strict=True)]
    pairs = [(r, h) for r, h in pairs if r]
    return count_errors([r for r, _ in pairs], [h for _, h in pairs])


def error_rates(references: Sequence[str], hypotheses: Sequence[str], normalizer: str = "basic") -> dict[str, float]:
    """Corpus-level WER and CER after `normalizer`."""
    counts = error_counts(references, hypotheses, normalizer)
    return {"wer": counts.wer, "cer": counts.cer}


# MCD analysis: LJSpeech/VITS framing (46 ms windows, 11.6 ms hop at 22.05 kHz), c1..c13 of an 80-band mel cepstrum
MCD_SETTINGS = {"sample_rate": 22050, "n_fft": 1024, "hop_length": 256, "n_mels": 80, "coefficients": 13,
                "floor_db": 60, "alignment": "dtw"}
_MCD_DB = 10 * math.sqrt(2) / math.log(10)  # natural-log cepstral distance to dB (Kubichek, Kominek et al.)


def mel_cepstra(waveform: torch.Tensor) -> torch.Tensor:
    """Mel cepstra c1..c13 `[frames, 13]` of a 1-D waveform at 22.05 kHz (`MCD_SETTINGS`): the orthonormal DCT of
    its natural-log mel amplitudes, floored 60 dB below the loudest, so that faint hiss in pauses (below a
    recording's noise floor) does not outweigh the speech. c0, each frame's overall level, is left out, as usual."""
    rate, n_fft, hop, n_mels, count = (MCD_SETTINGS[k] for k in ("sample_rate", "n_fft", "hop_length", "n_mels",
                                                                  "coefficients"))
    waveform = torch.nn.functional.pad(waveform.float(), (0, max(0, n_fft - len(waveform))))  # one frame at least
    log_mel = mel_spectrogram(waveform[None], n_fft, n_mels, rate, hop, n_fft)[0]  # [n_mels, frames]
    log_mel = log_mel.clamp(min=float(log_mel.max()) - MCD_SETTINGS["floor_db"] * math.log(10) / 20)
    dct = torchaudio.functional.create_dct(count + 1, n_mels, "ortho")[:, 1:]  # [n_mels, count], c0 dropped
    return log_mel.T @ dct  # [frames, count]


def dtw_path(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of the cheapest path through `cost` `[N, M]` from (0, 0) to (N-1, M-1) by steps right, down
    or diagonal: exact dynamic time warping, one vectorised pass per row."""
    n, m = cost.shape
    total = np.empty((n, m))  # total[i, j]: cheapest path cost from (0, 0) to (i, j)
    total[0] = np.cumsum(cost[0])
    for i in range(1, n):
        above = np.minimum(total[i - 1], np.concatenate(([np.inf], total[i - 1, :-1])))  # from above or diagonal
        run = np.cumsum(cost[i])  # a horizontal run k..j within row i costs run[j] - run[k]
        total[i] = run + np.minimum.accumulate(cost[i] + above - run)
    i, j, path = n - 1, m - 1, [(n - 1, m - 1)]
    while i or j:
        steps = [(a, b) for a, b in ((i - 1, j - 1), (i - 1, j), (i, j - 1)) if a >= 0 and b >= 0]
        i, j = min(steps, key=lambda step: total[step])  # ties prefer the diagonal
        path.append((i, j))
    rows, columns = np.array(path[::-1]).T
    return rows, columns


def mel_cepstral_distortion(reference: torch.Tensor, synthesis: torch.Tensor) -> float:
    """MCD in dB between two 1-D waveforms at 22.05 kHz (`MCD_SETTINGS`): the mean frame distance
    `10 sqrt(2) / ln(10) * ||c_ref - c_syn||` along the DTW path, so that different timing alone costs little.

    From 80-band mel cepstra the figures run higher than SPTK mel-cepstrum MCDs of papers (about 5-8 dB for good
    TTS): compare them with each other (same `MCD_SETTINGS`), not with published numbers."""
    distances = torch.cdist(mel_cepstra(reference), mel_cepstra(synthesis),
                            compute_mode="donot_use_mm_for_euclid_dist").numpy()  # exact: 0 for identical frames
    rows, columns = dtw_path(distances)  # [N, M] frame distances -> the aligned frame pairs
    return float(_MCD_DB * distances[rows, columns].mean())
