import jiwer
import pytest

from speechtrain.tasks.metrics import error_counts, error_rates, normalize_text
from speechtrain.tasks.schedules import warmup_decay_factor


def test_normalizer_ignores_case_and_punctuation_but_keeps_contractions():
    assert normalize_text("Hello,  World! It's 'fine'.") == "hello world it's fine"
    assert normalize_text("  ") == ""


def test_normalizer_keeps_combining_marks_inside_words():
    assert normalize_text("नमस्ते दुनिया!") == "नमस्ते दुनिया"  # virama (Mn) and vowel signs (Mc) stay
    assert normalize_text("வணக்கம், உலகம்") == "வணக்கம் உலகம்"
    assert normalize_text("cafe\u0301 ok") == "café ok"  # NFKC composes the accent
    assert normalize_text("x\u20dd y") == "x\u20dd y"  # an enclosing mark (Me)
    counts = error_counts(["नमस्ते दुनिया"], ["नमस्ते दुनिया"])
    assert counts["words"] == 2 and counts["word_errors"] == 0


def test_error_rates_match_jiwer_on_normalised_text():
    refs = ["The cat sat.", "A dog barked loudly", "", "one two three"]
    hyps = ["the cat sat", "a dog parked", "noise", "one three four"]
    rates = error_rates(refs, hyps)
    kept = [(normalize_text(r), normalize_text(h)) for r, h in zip(refs, hyps) if r.strip()]
    assert rates["wer"] == pytest.approx(jiwer.wer([r for r, _ in kept], [h for _, h in kept]))
    assert rates["cer"] == pytest.approx(jiwer.cer([r for r, _ in kept], [h for _, h in kept]))
    assert 0 < rates["cer"] < rates["wer"]


def test_counts_add_up_across_shards():
    refs, hyps = ["a b c", "d e", "f g h i"], ["a x c", "d", "f g h i j"]
    whole = error_counts(refs, hyps)
    parts = [error_counts(refs[:1], hyps[:1]), error_counts(refs[1:], hyps[1:])]
    assert whole == {k: parts[0][k] + parts[1][k] for k in whole}
    assert whole["word_errors"] == 3 and whole["words"] == 9


def test_warmup_then_linear_decay():
    factors = [warmup_decay_factor(s, 4, 12, "linear") for s in range(12)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a > b for a, b in zip(factors[4:], factors[5:]))
    assert warmup_decay_factor(12, 4, 12, "cosine", min_lr_ratio=0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown learning-rate decay"):
        warmup_decay_factor(0, 1, 2, "exp")
