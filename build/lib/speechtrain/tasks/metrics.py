"""Error rates for ASR, computed with jiwer after one text normaliser shared by every ASR recipe."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import jiwer

_PUNCTUATION = re.compile(r"[^\w\s']|_")
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lower-case, NFKC, punctuation to spaces (apostrophes kept), collapsed whitespace.

    Scoring "Hello, world!" against "hello world" as a perfect match is what a reader expects of WER.
    """
    text = unicodedata.normalize("NFKC", text).lower().replace("’", "'")
    text = _PUNCTUATION.sub(" ", text)
    text = re.sub(r"(^|\s)'+|'+(\s|$)", r"\1 \2", text)  # quotes, not contractions
    return _SPACES.sub(" ", text).strip()


def error_counts(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, int]:
    """Word and character edit counts over normalised texts (empty references left out).

    Counts, not rates, so that ranks and batches add up to the corpus-level WER and CER.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    pairs = [(normalize_text(r), normalize_text(h)) for r, h in zip(references, hypotheses, strict=True)]
    pairs = [(r, h) for r, h in pairs if r]
    counts = {"word_errors": 0, "words": 0, "char_errors": 0, "chars": 0}
    if not pairs:
        return counts
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    counts["word_errors"] = words.substitutions + words.deletions + words.insertions
    counts["words"] = words.substitutions + words.deletions + words.hits
    counts["char_errors"] = chars.substitutions + chars.deletions + chars.insertions
    counts["chars"] = chars.substitutions + chars.deletions + chars.hits
    return counts


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus-level WER and CER over normalised texts."""
    counts = error_counts(references, hypotheses)
    return {
        "wer": counts["word_errors"] / max(counts["words"], 1),
        "cer": counts["char_errors"] / max(counts["chars"], 1),
    }
