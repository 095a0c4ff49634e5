"""Word and character error rates after a named text normaliser, shared by validation and `speechtrain-evaluate`.

A WER means something only beside its normaliser: published Whisper numbers are computed after Whisper's English
normaliser ("Mr." becomes "mister", "twenty-one" becomes "21", British spellings become American), so the same
name picks the same function everywhere and is recorded with every result:

- `basic`: lower case, NFKC, punctuation and symbols to spaces; apostrophes of contractions and combining marks
  (accents, the Devanagari virama) stay with their word. Whisper's own basic normaliser splits both.
- `whisper_english`: Whisper's English normaliser, from the `whisper-normalizer` package (openai/whisper's code).
- `whisper_basic`: Whisper's basic (language-independent) normaliser, from the same package.
- `none`: the texts as they are, only surrounding whitespace removed.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import asdict, astuple, dataclass, field
from functools import cache

import jiwer

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
