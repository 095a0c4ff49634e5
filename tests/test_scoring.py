from functools import cache

import jiwer
import numpy as np
import pytest
import torch

from speechtrain.errors import ConfigError
from speechtrain.scoring import (
    dtw_path,
    error_counts,
    error_rates,
    get_normalizer,
    mel_cepstral_distortion,
    normalize_basic,
)


def test_basic_normalizer_ignores_case_and_punctuation_but_keeps_contractions():
    assert normalize_basic("Hello,  World! It's 'fine'.") == "hello world it's fine"
    assert normalize_basic("  ") == ""


def test_basic_normalizer_keeps_combining_marks_inside_words():
    assert normalize_basic("नमस्ते दुनिया!") == "नमस्ते दुनिया"  # virama (Mn) and vowel signs (Mc) stay
    assert normalize_basic("வணக்கம், உலகம்") == "வணக்கம் உலகம்"
    assert normalize_basic("cafe\u0301 ok") == "café ok"  # NFKC composes the accent
    assert normalize_basic("x\u20dd y") == "x\u20dd y"  # an enclosing mark (Me)
    counts = error_counts(["नमस्ते दुनिया"], ["नमस्ते दुनिया"])
    assert counts.words.reference_length == 2 and counts.words.errors == 0


# (text, basic, whisper_english): contractions, numbers, titles, British spellings, currency
CRAFTED = [
    ("I'm sure it won't rain.", "i'm sure it won't rain", "i am sure it will not rain"),
    ("Twenty-one years old", "twenty one years old", "21 years old"),
    ("Mr. Smith met Dr. Jones", "mr smith met dr jones", "mister smith met doctor jones"),
    ("The colour grey", "the colour grey", "the color gray"),
    ("It costs $20.", "it costs 20", "it costs $20"),
]


@pytest.mark.parametrize(("text", "basic", "english"), CRAFTED)
def test_basic_and_whisper_english_differ_as_whispers_normalizers_do(text, basic, english):
    assert get_normalizer("basic")(text) == basic
    assert get_normalizer("whisper_english")(text) == english


def test_whisper_basic_splits_what_ours_keeps_and_none_keeps_everything():
    assert get_normalizer("whisper_basic")("I'm here, OK?") == "i m here ok"
    assert get_normalizer("none")("  I'm here, OK? ") == "I'm here, OK?"
    with pytest.raises(ConfigError, match="unknown normalizer 'english'.*whisper_english"):
        get_normalizer("english")


def test_the_normalizer_changes_the_wer():
    refs, hyps = ["Mr. Smith won't pay twenty-one dollars"], ["mister smith will not pay 21 dollars"]
    assert error_rates(refs, hyps, "whisper_english")["wer"] == 0
    # mr/mister, won't/will and twenty/21 substituted, "not" inserted, "one" deleted: 5 edits over 7 words
    assert error_rates(refs, hyps, "basic")["wer"] == pytest.approx(5 / 7)


def test_error_rates_match_jiwer_on_normalised_text():
    refs = ["The cat sat.", "A dog barked loudly", "", "one two three"]
    hyps = ["the cat sat", "a dog parked", "noise", "one three four"]
    rates = error_rates(refs, hyps)
    kept = [(normalize_basic(r), normalize_basic(h)) for r, h in zip(refs, hyps) if r.strip()]
    assert rates["wer"] == pytest.approx(jiwer.wer([r for r, _ in kept], [h for _, h in kept]))
    assert rates["cer"] == pytest.approx(jiwer.cer([r for r, _ in kept], [h for _, h in kept]))
    assert 0 < rates["cer"] < rates["wer"]


def test_counts_add_up_across_shards_with_their_edit_kinds():
    refs, hyps = ["a b c", "d e", "f g h i"], ["a x c", "d", "f g h i j"]
    whole = error_counts(refs, hyps)
    assert whole == error_counts(refs[:1], hyps[:1]) + error_counts(refs[1:], hyps[1:])
    words = whole.words
    assert (words.substitutions, words.deletions, words.insertions, words.hits) == (1, 1, 1, 7)
    assert words.errors == 3 and words.reference_length == 9 and whole.wer == pytest.approx(3 / 9)


def cheapest_path_cost(cost: np.ndarray) -> float:
    """The DTW recursion itself, from (0, 0) to the last cell."""

    @cache
    def to(i: int, j: int) -> float:
        before = [to(a, b) for a, b in ((i - 1, j - 1), (i - 1, j), (i, j - 1)) if a >= 0 and b >= 0]
        return cost[i, j] + min(before, default=0.0)

    return to(cost.shape[0] - 1, cost.shape[1] - 1)


def test_dtw_finds_the_cheapest_path_of_every_small_matrix():
    rng = np.random.default_rng(0)
    for _ in range(100):
        cost = rng.random(tuple(rng.integers(1, 8, 2)))
        rows, columns = dtw_path(cost)
        assert (rows[0], columns[0]) == (0, 0) and (rows[-1], columns[-1]) == (cost.shape[0] - 1, cost.shape[1] - 1)
        assert set(zip(np.diff(rows), np.diff(columns))) <= {(0, 1), (1, 0), (1, 1)}
        assert cost[rows, columns].sum() == pytest.approx(cheapest_path_cost(cost))


def test_mcd_forgives_a_pause_but_not_another_sound():
    t = torch.arange(22050) / 22050
    tone = 0.5 * torch.sin(2 * torch.pi * 300 * t) * torch.sin(2 * torch.pi * 3 * t)  # a warbling tone, 1 s
    paused = torch.cat([tone[:11025], torch.zeros(5000), tone[11025:]])
    other = 0.5 * torch.sin(2 * torch.pi * 2500 * t) * torch.sin(2 * torch.pi * 3 * t)
    assert mel_cepstral_distortion(tone, tone) == 0.0
    assert mel_cepstral_distortion(tone, paused) < 0.2 * mel_cepstral_distortion(tone, other)
