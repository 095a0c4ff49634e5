"""Bark's text tokenizer: BERT WordPiece (`bert-base-multilingual-cased` in suno/bark checkpoints) read from a
folder's `vocab.txt` and `tokenizer_config.json`, through the `tokenizers` library. `encode` gives the ids of
transformers' `BertTokenizer(...)(text, add_special_tokens=False)`, which `BarkProcessor` feeds the semantic model
(it adds `TEXT_ENCODING_OFFSET` itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from speechtrain.errors import DataError
from speechtrain.models.tokenization import TOKENIZER_CONFIG_NAME, read_optional_json, token_text, write_json_files

VOCAB_FILE = "vocab.txt"
CONFIG_FILE = TOKENIZER_CONFIG_NAME
SPECIAL_TOKENS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                  "mask_token": "[MASK]"}


class BarkTextTokenizer:
    """WordPiece over BERT's normalisation and pre-tokenisation. `do_lower_case` defaults to transformers'
    BertTokenizer default (True); multilingual-cased folders set it False in `tokenizer_config.json`.
    `strip_accents=None` follows `do_lower_case`, as in BERT."""

    def __init__(self, vocab: list[str], do_lower_case: bool = True, strip_accents: bool | None = None,
                 tokenize_chinese_chars: bool = True, special_tokens: dict[str, str] | None = None):
        if not vocab:
            raise DataError("the WordPiece vocabulary is empty")
        self.vocab = list(vocab)
        self.do_lower_case, self.strip_accents = do_lower_case, strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.special_tokens = {**SPECIAL_TOKENS, **(special_tokens or {})}
        ids = {token: index for index, token in enumerate(self.vocab)}
        unk = self.special_tokens["unk_token"]
        if unk not in ids:
            raise DataError(f"the vocabulary has no unknown token {unk!r}")
        self._tokenizer = Tokenizer(models.WordPiece(ids, unk_token=unk, max_input_chars_per_word=100))
        self._tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=tokenize_chinese_chars, strip_accents=strip_accents,
            lowercase=do_lower_case)
        self._tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        self._tokenizer.add_special_tokens([token for token in self.special_tokens.values() if token in ids])

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without [CLS]/[SEP]."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids)

    def __len__(self) -> int:
        return len(self.vocab)

    def config(self) -> dict[str, Any]:
        return {"tokenizer_class": "BertTokenizer", "do_lower_case": self.do_lower_case,
                "strip_accents": self.strip_accents, "tokenize_chinese_chars": self.tokenize_chinese_chars,
                "model_max_length": 512, **self.special_tokens}

    def save_pretrained(self, directory: str | Path) -> None:
        """Writes `vocab.txt` and `tokenizer_config.json`, which transformers' `BertTokenizer` reads."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / VOCAB_FILE).write_text("".join(token + "\n" for token in self.vocab), encoding="utf-8")
        write_json_files(directory, {CONFIG_FILE: self.config()})

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> BarkTextTokenizer:
        """Reads a folder with `vocab.txt` (one token per line, id = line number) and optionally
        `tokenizer_config.json`, e.g. a suno/bark or bert-base-multilingual-cased folder."""
        directory = Path(directory)
        vocab_path, config_path = directory / VOCAB_FILE, directory / CONFIG_FILE
        if not vocab_path.is_file():
            raise FileNotFoundError(f"no {VOCAB_FILE} in {directory}; expected a BERT WordPiece tokenizer folder")
        vocab = vocab_path.read_text(encoding="utf-8").split("\n")  # only "\n" ends a token, as in BERT
        vocab = vocab[:-1] if vocab[-1] == "" else vocab
        config = read_optional_json(config_path)
        special = {key: token_text(config[key]) for key in SPECIAL_TOKENS if token_text(config.get(key))}
        return cls(vocab, do_lower_case=config.get("do_lower_case", True), strip_accents=config.get("strip_accents"),
                   tokenize_chinese_chars=config.get("tokenize_chinese_chars", True), special_tokens=special)
