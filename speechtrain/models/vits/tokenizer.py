"""The VITS text front end: text -> symbol ids, in the folder format of transformers' `VitsTokenizer`.

`encode` runs the same steps as `VitsTokenizer` (lower-casing outside the vocabulary, the Romanian
cedilla, uroman romanisation, espeak phonemisation, blanks interspersed), so a folder written by
`save_pretrained` gives the same ids in transformers, and an MMS-TTS folder gives the same ids here.
Two things come first or differ, both recorded in `tokenizer_config.json` or documented here:

* cleaners (`cleaners="english"` or `"basic"`, the original VITS text/cleaners.py without its
  unidecode and number steps) run before everything; transformers ignores the key, so its ids match
  ours on text the cleaners leave unchanged (a folder without the key, e.g. MMS, has none);
* characters outside the symbol table: with `strict=True` they raise `UnknownSymbolError`, naming them
  and the text; otherwise they are dropped, with one warning per distinct character, and counted in
  `dropped_characters`. (`VitsTokenizer` drops them too when it normalises without phonemes; when it
  phonemises, or does not normalise, it maps them to its unk token, or to None without one.)

And one `VitsTokenizer` quirk is not copied: a character equal to the pad token (MMS-TTS English pads with
"k", id 0) is interspersed with blanks like any other symbol, as the original VITS/MMS code does, where
transformers splits it off as a special token without blanks around it.

The default symbol table is the original VITS one (jaywalnut310/vits text/symbols.py): the blank `_`,
punctuation, ASCII letters and the IPA letters that phonemised text uses, with the original ids (the
apostrophe appears twice; its later id wins, as in the original), so the LJSpeech checkpoints' ids
hold. `len(tokenizer)` is the embedding size: the largest id plus one.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from speechtrain.errors import ConfigError, DataError, DependencyError
from speechtrain.models.tokenization import (
    TOKENIZER_CONFIG_NAME,
    read_json,
    read_optional_json,
    token_text,
    write_json_files,
)

logger = logging.getLogger(__name__)

PAD = "_"
PUNCTUATION = ';:,.!?¡¿—…"«»“” '
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
IPA_LETTERS = (
    "ɑɐɒæɓʙβɔɕçɗɖðʤəɘɚɛɜɝɞɟʄɡɠɢʛɦɧħɥʜɨɪʝɭɬɫɮʟɱɯɰŋɳɲɴøɵɸθœɶ"
    "ʘɹɺɾɻʀʁɽʂʃʈʧʉʊʋⱱʌɣɤʍχʎʏʑʐʒʔʡʕʢǀǁǂǃˈˌːˑʼʴʰʱʲʷˠˤ˞↓↑→↗↘'̩'ᵻ"
)
SYMBOLS = (PAD, *PUNCTUATION, *LETTERS, *IPA_LETTERS)  # the original table: 178 entries, ids 0..177

VOCAB_FILE, CONFIG_FILE = "vocab.json", TOKENIZER_CONFIG_NAME
INSTALL_PHONEMIZER = "`pip install phonemizer` (or `pip install speechtrain[phonemes]`)"
INSTALL_ESPEAK = "`apt-get install espeak-ng` (Debian, Ubuntu) or `brew install espeak-ng` (macOS)"

ABBREVIATIONS = [(re.compile(rf"\b{short}\.", re.IGNORECASE), full) for short, full in [
    ("mrs", "misess"), ("mr", "mister"), ("dr", "doctor"), ("st", "saint"), ("co", "company"), ("jr", "junior"),
    ("maj", "major"), ("gen", "general"), ("drs", "doctors"), ("rev", "reverend"), ("lt", "lieutenant"),
    ("hon", "honorable"), ("sgt", "sergeant"), ("capt", "captain"), ("esq", "esquire"), ("ltd", "limited"),
    ("col", "colonel"), ("ft", "fort"),
]]  # the original VITS list, in its order


def basic_cleaners(text: str) -> str:
    """Lower-case and collapse runs of whitespace to one space (any language)."""
    return re.sub(r"\s+", " ", text.lower())


def english_cleaners(text: str) -> str:
    """`basic_cleaners` plus the original VITS abbreviations ("Dr." -> "doctor"). Numbers are not spelled out:
    give normalised transcripts (LJSpeech's third column is one), or the digits are outside the table."""
    text = text.lower()
    for pattern, full in ABBREVIATIONS:
        text = pattern.sub(full, text)
    return re.sub(r"\s+", " ", text)


CLEANERS = {"basic": basic_cleaners, "english": english_cleaners}


class UnknownSymbolError(DataError):
    """A text holds characters that are not in the symbol table (raised by a `strict` tokenizer)."""


def build_symbol_table(texts: Iterable[str], cleaners: str | None = "basic", pad: str = PAD) -> list[str]:
    """A symbol table for a new language: `pad` (the blank, id 0), then every character of the cleaned
    `texts`, sorted. Use it with the same cleaners: `VitsTextTokenizer(symbols, cleaners=cleaners)`."""
    clean = _cleaner(cleaners)
    characters = set()
    for text in texts:
        characters.update(clean(text))
    return [pad, *sorted(characters - {pad})]


def _cleaner(name: str | None):
    if name is None:
        return lambda text: text
    if name not in CLEANERS:
        raise ConfigError(f"unknown cleaners {name!r}; expected one of {sorted(CLEANERS)} or None")
    return CLEANERS[name]


class VitsTextTokenizer:
    """Text to VITS input ids: cleaners, normalisation, optional phonemes, symbol ids, blanks (id 0) between.

    Args:
        symbols: the symbol table, as a list (id = position; a repeated symbol keeps its last id) or a
            `{symbol: id}` mapping as in `vocab.json`. Symbols are single characters except `pad_token`
            and `unk_token`. Defaults to the original VITS table (`SYMBOLS`).
        cleaners: "english", "basic" or None, applied first (see the module docstring).
        add_blank: intersperse id 0 between symbols and at both ends, as VITS is trained.
        normalize: lower-case characters that are not in the table, and strip the text, as `VitsTokenizer`.
        phonemize: convert the text to IPA with espeak-ng (`phonemizer_language` voice) through the
            `phonemizer` package, as the original `english_cleaners2` and `VitsTokenizer` do.
        is_uroman: romanise non-ASCII text with the `uroman` package first (MMS-TTS checkpoints that need it).
        language: the `VitsTokenizer` language code (ISO 639-3, e.g. "ron"); only changes Romanian text.
        pad_token: the padding symbol; defaults to the symbol with id 0 (the blank).
        unk_token: kept for the folder format only; unknown characters follow `strict`.
        strict: raise `UnknownSymbolError` on characters outside the table instead of dropping them.
    """

    def __init__(
        self,
        symbols: Sequence[str] | Mapping[str, int] = SYMBOLS,
        cleaners: str | None = "english",
        add_blank: bool = True,
        normalize: bool = True,
        phonemize: bool = False,
        phonemizer_language: str = "en-us",
        is_uroman: bool = False,
        language: str | None = None,
        pad_token: str | None = None,
        unk_token: str | None = None,
        strict: bool = False,
    ):
        vocab = dict(symbols) if isinstance(symbols, Mapping) else {symbol: i for i, symbol in enumerate(symbols)}
        if not vocab:
            raise DataError("the symbol table is empty")
        for symbol, index in vocab.items():
            if not isinstance(index, int) or index < 0:
                raise DataError(f"symbol {symbol!r} has id {index!r}; ids must be non-negative integers")
            if len(symbol) != 1 and symbol not in (pad_token, unk_token):
                raise DataError(f"symbol {symbol!r} is not a single character; VITS tokenizes character by character")
        self.id_to_symbol = {index: symbol for symbol, index in vocab.items()}
        if add_blank and 0 not in self.id_to_symbol:
            raise DataError("add_blank intersperses id 0, but no symbol has id 0; put the blank (e.g. '_') first")
        _cleaner(cleaners)
        self.vocab = vocab
        self.cleaners = cleaners
        self.add_blank = add_blank
        self.normalize = normalize
        self.phonemize = phonemize
        self.phonemizer_language = phonemizer_language
        self.is_uroman = is_uroman
        self.language = language
        self.pad_token = self.id_to_symbol.get(0) if pad_token is None else pad_token
        self.unk_token = unk_token
        self.strict = strict
        self.dropped_characters: Counter[str] = Counter()
        self._lock = threading.Lock()  # datasets encode from worker threads; espeak is not thread-safe
        self._phonemizer = self._romanizer = None

    @property
    def pad_id(self) -> int:
        """The id that pads a batch of texts: the pad token's, or the blank (0) when the table lacks it."""
        return self.vocab.get(self.pad_token, 0)

    def __len__(self) -> int:
        return max(self.vocab.values()) + 1

    def text_to_symbols(self, text: str) -> str:
        """The symbol string that `encode` turns into ids (before the blanks)."""
        original = text
        text = _cleaner(self.cleaners)(text)
        if self.normalize:
            text = self._lowercase_outside_vocab(text)
        if self.language == "ron":
            text = text.replace("ț", "ţ")
        if self.is_uroman and re.search(r"[^\x00-\x7F]", text):
            text = self._romanize(text)
        if self.phonemize:
            text = re.sub(r"\s+", " ", self._phonemize(text))
        unknown = sorted({character for character in text if character not in self.vocab})
        if unknown:
            self._reject_or_count(unknown, text, original)
            text = "".join(character for character in text if character in self.vocab)
        return text.strip() if self.normalize and not self.phonemize else text

    def encode(self, text: str) -> list[int]:
        """Symbol ids of `text`, with the blank (id 0) before, between and after them when `add_blank`; no
        symbols give no ids (no lone blank), as `VitsTokenizer`."""
        ids = [self.vocab[symbol] for symbol in self.text_to_symbols(text)]
        if not self.add_blank or not ids:
            return ids
        interspersed = [0] * (2 * len(ids) + 1)
        interspersed[1::2] = ids
        return interspersed

    def decode(self, ids: Sequence[int]) -> str:
        """The symbols of `ids` (blanks removed when `add_blank`); for logs, not an inverse of the cleaners."""
        ids = list(ids)
        if self.add_blank and len(ids) > 1:
            ids = ids[1::2]
        return "".join(self.id_to_symbol.get(int(i), "") for i in ids)

    def _lowercase_outside_vocab(self, text: str) -> str:
        """`VitsTokenizer.normalize_text`: keep every vocabulary entry found at a position, lower-case the rest."""
        longer = [entry for entry in (*self.vocab, self.pad_token, self.unk_token) if entry and len(entry) > 1]
        if not longer:
            return "".join(c if c in self.vocab else c.lower() for c in text)
        out, i = [], 0
        while i < len(text):
            entry = next((entry for entry in longer if text.startswith(entry, i)), None) or text[i]
            out.append(entry if entry in self.vocab or len(entry) > 1 else entry.lower())
            i += len(entry)
        return "".join(out)

    def _reject_or_count(self, unknown: list[str], text: str, original: str) -> None:
        listed = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in unknown)
        if self.strict:
            raise UnknownSymbolError(f"characters {listed} of {original!r} (prepared as {text!r}) are not in the "
                                     "symbol table; clean the text, extend the table, or set strict=False to drop them")
        with self._lock:
            new = [c for c in unknown if c not in self.dropped_characters]
            self.dropped_characters.update(c for c in text if c in unknown)
        for character in new:
            logger.warning("dropping %r (U+%04X), which is not in the symbol table (first seen in %r); further "
                           "occurrences are dropped silently and counted in dropped_characters",
                           character, ord(character), original)

    def _phonemize(self, text: str) -> str:
        """espeak-ng IPA with stress and punctuation kept, as `VitsTokenizer` and the original english_cleaners2."""
        with self._lock:
            if self._phonemizer is None:
                self._phonemizer = self._start_espeak()
            lines = [line for line in text.strip("\n").split("\n") if line.strip()]  # as phonemizer.phonemize(str)
            return "\n".join(self._phonemizer.phonemize(lines, strip=True)) if lines else ""

    def _start_espeak(self) -> Any:
        """phonemizer's espeak-ng backend. Every way it can fail to start is a `DependencyError` (an ImportError,
        so that the datasets, which skip an utterance on a ValueError, do not take it for a bad transcript)."""
        fallback = "or train on characters (tokenizer=vits_characters)"
        try:
            from phonemizer.backend import EspeakBackend
        except ImportError as err:
            raise DependencyError(f"tokenizer.phonemize=true needs the phonemizer package, which is not installed: "
                                  f"{INSTALL_PHONEMIZER}, and the espeak-ng program: {INSTALL_ESPEAK}; {fallback}"
                                  ) from err
        if not EspeakBackend.is_available():
            raise DependencyError(f"tokenizer.phonemize=true runs espeak-ng, which phonemizer cannot find: install it "
                                  f"with {INSTALL_ESPEAK} (or point PHONEMIZER_ESPEAK_LIBRARY at its "
                                  f"libespeak-ng.so), {fallback}")
        try:
            return EspeakBackend(self.phonemizer_language, preserve_punctuation=True, with_stress=True)
        except RuntimeError as err:
            raise DependencyError(f"espeak-ng cannot phonemise tokenizer.phonemizer_language="
                                  f"{self.phonemizer_language!r} ({err}); pick one of `espeak-ng --voices`") from err

    def _romanize(self, text: str) -> str:
        with self._lock:
            if self._romanizer is None:
                try:
                    import uroman
                except ImportError as err:
                    raise ImportError("is_uroman=True needs the uroman package; install it with `pip install uroman`"
                                      ) from err
                self._romanizer = uroman.Uroman()
            return self._romanizer.romanize_string(text)

    def __getstate__(self) -> dict[str, Any]:
        """Picklable for DataLoader workers: the lock and the espeak/uroman handles are made again there."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_phonemizer", "_romanizer")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock(), _phonemizer=None, _romanizer=None)

    def config(self) -> dict[str, Any]:
        """The `tokenizer_config.json` contents: `VitsTokenizer`'s keys plus `cleaners` and `phonemizer_language`."""
        return {
            "tokenizer_class": "VitsTokenizer", "add_blank": self.add_blank, "normalize": self.normalize,
            "phonemize": self.phonemize, "is_uroman": self.is_uroman, "language": self.language,
            "pad_token": self.pad_token, "unk_token": self.unk_token, "cleaners": self.cleaners,
            "phonemizer_language": self.phonemizer_language,
        }

    def save_pretrained(self, directory: str | Path) -> None:
        """Writes `vocab.json` and `tokenizer_config.json`, which `VitsTokenizer.from_pretrained` reads."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vocab = json.dumps(self.vocab, indent=2, sort_keys=True, ensure_ascii=False)
        (directory / VOCAB_FILE).write_text(vocab + "\n", encoding="utf-8")
        write_json_files(directory, {CONFIG_FILE: self.config()})

    @classmethod
    def from_pretrained(cls, directory: str | Path, strict: bool = False) -> VitsTextTokenizer | PiperPhonemeTokenizer:
        """Reads a folder written by `save_pretrained` or by transformers (e.g. `facebook/mms-tts-*`); a folder
        of an imported Piper voice gives its `PiperPhonemeTokenizer`."""
        directory = Path(directory)
        if (directory / PIPER_VOICE_FILE).is_file():
            return PiperPhonemeTokenizer.from_pretrained(directory)
        vocab_path, config_path = directory / VOCAB_FILE, directory / CONFIG_FILE
        if not vocab_path.is_file():
            raise FileNotFoundError(f"no {VOCAB_FILE} in {directory}; expected a VITS tokenizer folder")
        vocab, config = read_json(vocab_path), read_optional_json(config_path)
        if not isinstance(vocab, dict):
            raise ValueError(f"{vocab_path}: expected a {{symbol: id}} object, got {type(vocab).__name__}")
        special = {key: token_text(config.get(key)) for key in ("pad_token", "unk_token")}
        return cls(
            vocab, cleaners=config.get("cleaners"), add_blank=config.get("add_blank", True),
            normalize=config.get("normalize", True), phonemize=config.get("phonemize", True),
            phonemizer_language=config.get("phonemizer_language", "en-us"), is_uroman=config.get("is_uroman", False),
            language=config.get("language"), pad_token=special["pad_token"] or "<pad>",
            unk_token=special["unk_token"] if "unk_token" in config else "<unk>", strict=strict,
        )


PIPER_VOICE_FILE = "piper_voice.json"  # the voice's .onnx.json, kept whole
INSTALL_PIPER = "`pip install piper-tts` (or `pip install speechtrain[piper]`)"


class PiperPhonemeTokenizer:
    """Text to a Piper voice's phoneme ids, through piper-tts's own phonemizer and id map (`PiperVoice.phonemize`
    and `phonemes_to_ids`), so the ids are Piper's exactly: `^`, then each phoneme followed by the pad `_`, then `$`.

    `voice` is the voice's `.onnx.json` (phoneme map, espeak voice, phoneme type, speakers), saved whole as
    `piper_voice.json` so that an export hands Piper back the same front end. `encode` joins the sentences of a
    text into one sequence, as Piper's training data does; `encode_sentences` gives one per sentence, as Piper
    synthesises.
    """

    def __init__(self, voice: Mapping[str, Any]):
        if "phoneme_id_map" not in voice or "_" not in voice["phoneme_id_map"]:
            raise DataError("a Piper voice config needs a phoneme_id_map with the pad '_'")
        self.voice = dict(voice)
        self._piper_voice: Any = None
        self._lock = threading.Lock()  # espeak is not thread-safe

    @property
    def pad_id(self) -> int:
        return self.voice["phoneme_id_map"]["_"][0]

    @property
    def speaker_id_map(self) -> dict[str, int]:
        return dict(self.voice.get("speaker_id_map") or {})

    def __len__(self) -> int:
        return int(self.voice.get("num_symbols") or 1 + max(i for ids in self.voice["phoneme_id_map"].values()
                                                            for i in ids))

    def _voice(self) -> Any:
        if self._piper_voice is None:
            try:
                from piper.config import PiperConfig
                from piper.voice import PiperVoice
            except ImportError as error:
                raise DependencyError(f"a Piper voice's phonemes need piper-tts: {INSTALL_PIPER}") from error
            self._piper_voice = PiperVoice(session=None, config=PiperConfig.from_dict(self.voice))
        return self._piper_voice

    def encode_sentences(self, text: str) -> list[list[int]]:
        """One id sequence per sentence of `text`, as Piper synthesises it."""
        with self._lock:
            voice = self._voice()
            return [voice.phonemes_to_ids(phonemes) for phonemes in voice.phonemize(text)]

    def encode(self, text: str) -> list[int]:
        """The ids of the whole `text`: its sentences' phonemes joined, as Piper's training data has them."""
        with self._lock:
            voice = self._voice()
            return voice.phonemes_to_ids([phoneme for sentence in voice.phonemize(text) for phoneme in sentence])

    def __getstate__(self) -> dict[str, Any]:
        return {"voice": self.voice}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["voice"])

    def save_pretrained(self, directory: str | Path) -> None:
        """Writes `piper_voice.json` (the voice config) and a `tokenizer_config.json` naming this class."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_json_files(directory, {PIPER_VOICE_FILE: self.voice,
                                     CONFIG_FILE: {"tokenizer_class": type(self).__name__}})

    @classmethod
    def from_pretrained(cls, directory: str | Path, **_: Any) -> PiperPhonemeTokenizer:
        return cls(read_json(Path(directory) / PIPER_VOICE_FILE))
