import importlib.util
import json
import logging
import pickle
import shutil
import sys
import types

import pytest
from transformers import VitsTokenizer

from speechtrain.data.corpora import Utterance
from speechtrain.data.tts import TtsDataset
from speechtrain.errors import DependencyError
from speechtrain.models.vits.tokenizer import (
    SYMBOLS,
    UnknownSymbolError,
    VitsTextTokenizer,
    build_symbol_table,
    english_cleaners,
)

TEXTS = ["hello, world!", "Mixed Case; and   spaces ", "¿que? «quoted» “curly” — dash…", "a", "don't stop",
         "x y z!?", ""]


def hf_ids(directory, text: str) -> list[int]:
    return VitsTokenizer.from_pretrained(directory)(text).input_ids


def test_default_table_keeps_the_original_vits_ids():
    tokenizer = VitsTextTokenizer()
    # ids of jaywalnut310/vits text/symbols.py: '_' 0, ';' 1, ' ' 16, 'A' 17, 'a' 43, 'ɑ' 69, then "'" twice
    # (positions 174 and 176, the later wins in its dict) and 'ᵻ' last, 178 entries in all
    assert len(SYMBOLS) == 178 and len(tokenizer) == 178
    assert [tokenizer.vocab[s] for s in "_; Aaɑᵻ"] == [0, 1, 16, 17, 43, 69, 177]
    assert tokenizer.vocab["'"] == 176 and tokenizer.pad_id == 0


def test_english_cleaners_lowercase_expand_abbreviations_and_collapse_whitespace():
    cleaned = english_cleaners("Dr. Smith  and\tMrs. JONES met Capt. Cook.")
    assert cleaned == "doctor smith and misess jones met captain cook."
    assert english_cleaners("drs. st. ltd.") == "doctors saint limited"


@pytest.mark.parametrize("add_blank", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
def test_ids_match_transformers_vits_tokenizer(tmp_path, add_blank, normalize, caplog):
    """Without cleaners our ids are VitsTokenizer's on any text; unknown characters (é, -) are dropped by both
    when normalising (VitsTokenizer maps them to None otherwise, so those texts are compared with it only then)."""
    ours = VitsTextTokenizer(cleaners=None, add_blank=add_blank, normalize=normalize)
    ours.save_pretrained(tmp_path)
    hf = VitsTokenizer.from_pretrained(tmp_path)
    for text in TEXTS + (["Zé ü-x", "é", "¿qué?"] if normalize else []):
        assert ours.encode(text) == hf(text).input_ids, text
    assert ours.encode("hello") == ([0, 50, 0, 47, 0, 54, 0, 54, 0, 57, 0] if add_blank else [50, 47, 54, 54, 57])


def test_with_english_cleaners_ids_match_transformers_on_the_cleaned_text(tmp_path):
    ours = VitsTextTokenizer()
    ours.save_pretrained(tmp_path)
    hf = VitsTokenizer.from_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["cleaners"] == "english"
    for text in ["Dr. Jekyll  and Mr. Hyde!", "HELLO there", "plain text"]:
        assert ours.encode(text) == hf(english_cleaners(text)).input_ids
    assert ours.encode("plain text") == hf("plain text").input_ids  # the cleaners change nothing here
    assert ours.encode("Hello") != hf("Hello").input_ids  # 'H' is in the table: only our cleaners lower it


def test_reads_a_folder_written_by_transformers(tmp_path):
    """An MMS-style folder: its own vocabulary (id 0 a letter), no cleaners key, written by transformers."""
    vocab = {symbol: i for i, symbol in enumerate("kaeiou bdmnrst'-")}
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "vocab.json").write_text(json.dumps(vocab))
    hf = VitsTokenizer(str(tmp_path / "src" / "vocab.json"), pad_token="k", unk_token="<unk>", phonemize=False)
    hf.save_pretrained(tmp_path / "hf")
    ours = VitsTextTokenizer.from_pretrained(tmp_path / "hf")
    assert ours.cleaners is None and ours.pad_token == "k" and ours.pad_id == 0 and ours.unk_token == "<unk>"
    for text in ["Robert's Bread-Dish", "mister ed", "MOST  notes x"]:
        assert ours.encode(text) == hf(text).input_ids, text
    # the pad symbol in the text is interspersed like any other, as the original VITS/MMS code does;
    # VitsTokenizer splits it off as a special token, without blanks around it
    assert ours.encode("kiosk") == [0, 0, 0, 3, 0, 4, 0, 12, 0, 0, 0] != hf("kiosk").input_ids


def test_strict_rejects_unknown_characters_naming_them_and_the_text():
    tokenizer = VitsTextTokenizer(strict=True)
    with pytest.raises(UnknownSymbolError, match=r"'3' \(U\+0033\).*'@'.*'call 3 @ home'"):
        tokenizer.encode("Call 3 @ home")


def test_lenient_drops_unknown_characters_with_one_warning_each(caplog):
    tokenizer = VitsTextTokenizer()
    with caplog.at_level(logging.WARNING, logger="speechtrain.models.vits.tokenizer"):
        ids = tokenizer.encode("a1b2 11")
        tokenizer.encode("1 more 2 and 3")
    assert tokenizer.decode(ids) == "ab"  # '1' and '2' dropped, then the trailing space stripped
    warned = [record.getMessage() for record in caplog.records]
    assert len(warned) == 3 and all("not in the symbol table" in message for message in warned)
    assert tokenizer.dropped_characters == {"1": 4, "2": 2, "3": 1}


def test_built_table_covers_its_corpus_and_round_trips_through_transformers(tmp_path, caplog):
    corpus = ["Grüß Gott, Straße!", "Ça va?  Très bien.", "ÆØÅ æøå"]
    symbols = build_symbol_table(corpus)
    assert symbols == ["_", *sorted(set("".join(corpus).lower()))]
    tokenizer = VitsTextTokenizer(symbols, cleaners="basic")
    with caplog.at_level(logging.WARNING):
        for text in corpus:
            assert all(i != 0 for i in tokenizer.encode(text)[1::2])
    assert not caplog.records and not tokenizer.dropped_characters
    tokenizer.save_pretrained(tmp_path)
    reloaded = VitsTextTokenizer.from_pretrained(tmp_path)
    for text in corpus:
        assert reloaded.encode(text) == tokenizer.encode(text) == hf_ids(tmp_path, " ".join(text.lower().split()))
    assert len(reloaded) == len(symbols)


def test_bad_tables_are_explained():
    with pytest.raises(ValueError, match="'ab' is not a single character"):
        VitsTextTokenizer(["_", "ab"])
    with pytest.raises(ValueError, match="no symbol has id 0"):
        VitsTextTokenizer({"a": 1, "b": 2})
    with pytest.raises(ValueError, match="unknown cleaners 'french'"):
        VitsTextTokenizer(cleaners="french")


class FakeEspeak:
    """Stands in for phonemizer's EspeakBackend: records how it is built and called."""

    calls: list = []
    installed, languages = True, ("en-us",)

    @classmethod
    def is_available(cls):
        return cls.installed

    def __init__(self, language, **options):
        if language not in self.languages:
            raise RuntimeError(f'language "{language}" is not supported by the espeak backend')  # as phonemizer
        FakeEspeak.calls.append(("init", language, options))

    def phonemize(self, lines, strip=False):
        FakeEspeak.calls.append(("phonemize", list(lines), strip))
        return ["həlˈoʊ,   wˈɜːld!" for _ in lines]


@pytest.fixture
def fake_espeak(monkeypatch):
    backend = types.ModuleType("phonemizer.backend")
    backend.EspeakBackend = FakeEspeak
    monkeypatch.setitem(sys.modules, "phonemizer", types.ModuleType("phonemizer"))
    monkeypatch.setitem(sys.modules, "phonemizer.backend", backend)
    monkeypatch.setattr(FakeEspeak, "calls", [])
    return FakeEspeak


def test_phonemes_come_from_espeak_with_stress_and_punctuation(fake_espeak):
    tokenizer = VitsTextTokenizer(phonemize=True)
    ids = tokenizer.encode("Hello,  World!")
    ipa = "həlˈoʊ, wˈɜːld!"  # whitespace collapsed after phonemisation, as VitsTokenizer does
    assert ids[1::2] == [SYMBOLS.index(s) for s in ipa] and set(ids[0::2]) == {0}
    assert FakeEspeak.calls == [
        ("init", "en-us", {"preserve_punctuation": True, "with_stress": True}),
        ("phonemize", ["hello, world!"], True),
    ]
    tokenizer.encode("again")
    assert [call[0] for call in FakeEspeak.calls].count("init") == 1  # the backend is made once


def test_missing_phonemizer_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "phonemizer", None)
    monkeypatch.setitem(sys.modules, "phonemizer.backend", None)
    with pytest.raises(DependencyError, match=r"phonemizer package.*pip install phonemizer.*apt-get install espeak-ng"):
        VitsTextTokenizer(phonemize=True).encode("hello")


def test_missing_espeak_says_what_to_install_and_is_not_taken_for_a_bad_transcript(fake_espeak, monkeypatch):
    """The datasets skip an utterance whose text fails with a ValueError; a missing program must stop the run."""
    monkeypatch.setattr(fake_espeak, "installed", False)
    tokenizer = VitsTextTokenizer(phonemize=True)
    with pytest.raises(DependencyError, match=r"runs espeak-ng, which phonemizer cannot find.*apt-get install "
                                              r"espeak-ng.*tokenizer=vits_characters"):
        TtsDataset([Utterance("a", "/nonexistent/a.wav", "hello")], tokenizer, sample_rate=22050, hop_length=256,
                   segment_frames=32, max_duration=10.0)


def test_a_language_espeak_lacks_names_the_key(fake_espeak):
    with pytest.raises(DependencyError, match=r"tokenizer.phonemizer_language='xx'.*espeak-ng --voices"):
        VitsTextTokenizer(phonemize=True, phonemizer_language="xx").encode("hello")


@pytest.mark.skipif(importlib.util.find_spec("phonemizer") is None or not shutil.which("espeak-ng"),
                    reason="needs the phonemizer package and espeak-ng")
def test_real_phonemes_match_transformers(tmp_path):
    ours = VitsTextTokenizer(cleaners=None, phonemize=True)
    ours.save_pretrained(tmp_path)
    hf = VitsTokenizer.from_pretrained(tmp_path)
    for text in ["hello, world!", "the quick brown fox jumps over the lazy dog.", "how are you?"]:
        assert ours.encode(text) == hf(text).input_ids, text


def test_pickles_for_dataloader_workers():
    tokenizer = VitsTextTokenizer()
    tokenizer.encode("1")
    copy = pickle.loads(pickle.dumps(tokenizer))
    assert copy.encode("Hello there") == tokenizer.encode("Hello there") and copy.dropped_characters == {"1": 1}
