"""Speech2Text's tokenizer: fairseq's SentencePiece vocabulary in transformers' folder layout.
`train_s2t_tokenizer` trains one (also from the command line: `python -m speechtrain.models.speech2text.tokenizer
--help`), as fairseq's S2T `gen_vocab` does.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import sentencepiece

from speechtrain.data.corpora import CorpusSpec
from speechtrain.models import tokenization
from speechtrain.models.tokenization import SPECIAL_TOKENS_MAP_NAME, TOKENIZER_CONFIG_NAME

S2T_SPM_NAME = "sentencepiece.bpe.model"  # transformers' file name, whatever the SentencePiece model type
S2T_VOCAB_NAME = "vocab.json"
S2T_SPECIAL_TOKENS = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
S2T_MODEL_TYPES = ("unigram", "bpe", "char")
# transformers' `lang_codes` sets: target-language pieces `<lang:xx>` inside the SentencePiece model
S2T_LANGUAGE_SETS = {"mustc": ("pt", "fr", "ru", "nl", "ro", "it", "es", "de")}


class Speech2TextTokenizer:
    """SentencePiece text <-> ids as transformers' `Speech2TextTokenizer`: pieces from the SentencePiece model,
    ids through `vocab.json` (fairseq's dictionary: `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3 when we train it).

    Attributes:
        prefix_ids: the forced decoder prompt. fairseq and transformers start decoding from `</s>` (the
            checkpoints' `decoder_start_token_id`), followed by the target-language token `<lang:xx>` for
            multilingual (`lang_codes`) vocabularies, as transformers' `forced_bos_token_id`.
        bos_id, eos_id, pad_id, unk_id: ids of `<s>`, `</s>`, `<pad>`, `<unk>` in `vocab.json`.
        do_upper_case: the vocabulary is lower-case and transcripts are upper-cased on decode (fairseq's
            LibriSpeech checkpoints); `encode` then lower-cases, as it does with `do_lower_case`.
    """

    def __init__(
        self,
        sp_model: bytes,
        vocab: Mapping[str, int] | None = None,
        do_upper_case: bool = False,
        do_lower_case: bool = False,
        lang_codes: str | None = None,
        language: str | None = None,
    ):
        self.sp_model = bytes(sp_model)
        self.processor = sentencepiece.SentencePieceProcessor(model_proto=self.sp_model)
        self.vocab = dict(vocab) if vocab is not None else {
            self.processor.id_to_piece(i): i for i in range(self.processor.get_piece_size())
        }
        self.pieces = {token_id: piece for piece, token_id in self.vocab.items()}
        missing = [token for token in S2T_SPECIAL_TOKENS.values() if token not in self.vocab]
        if missing:
            raise ValueError(f"{S2T_VOCAB_NAME} lacks the special tokens {missing}")
        self.bos_id, self.pad_id, self.eos_id, self.unk_id = (
            self.vocab[S2T_SPECIAL_TOKENS[key]] for key in ("bos_token", "pad_token", "eos_token", "unk_token")
        )
        self.do_upper_case, self.do_lower_case = do_upper_case, do_lower_case
        self.lang_codes, self.language = lang_codes, None
        self.language_ids: dict[str, int] = {}
        self.prefix_ids: list[int] = [self.eos_id]
        if lang_codes is not None:
            if lang_codes not in S2T_LANGUAGE_SETS:
                raise ValueError(f"lang_codes={lang_codes!r} is unknown; known sets: {sorted(S2T_LANGUAGE_SETS)}")
            languages = S2T_LANGUAGE_SETS[lang_codes]
            self.language_ids = {code: self.processor.piece_to_id(f"<lang:{code}>") for code in languages}
            self.language = language or languages[0]
            if self.language not in self.language_ids:
                raise ValueError(f"language={self.language!r} is not in lang_codes {lang_codes!r}: {list(languages)}")
            self.prefix_ids.append(self.language_ids[self.language])
        elif language is not None:
            raise ValueError(f"language={language!r} needs a multilingual vocabulary (lang_codes); this one has none")
        self._special_ids = {self.bos_id, self.pad_id, self.eos_id, self.unk_id, *self.language_ids.values()}

    @classmethod
    def from_pretrained(cls, path: str | Path, language: str | None = None) -> Speech2TextTokenizer:
        """Reads `sentencepiece.bpe.model`, `vocab.json` and (if present) `tokenizer_config.json`; `language`
        picks the target language of a multilingual vocabulary (default: the folder's `tgt_lang`)."""
        folder = Path(path)
        tokenization.require_files(folder, (S2T_SPM_NAME, S2T_VOCAB_NAME), "Speech2Text")
        config = tokenization.read_optional_json(folder / TOKENIZER_CONFIG_NAME)
        try:
            return cls(
                (folder / S2T_SPM_NAME).read_bytes(),
                tokenization.read_json(folder / S2T_VOCAB_NAME),
                do_upper_case=bool(config.get("do_upper_case", False)),
                do_lower_case=bool(config.get("do_lower_case", False)),
                lang_codes=config.get("lang_codes"),
                language=language or config.get("tgt_lang"),
            )
        except (ValueError, RuntimeError) as error:
            raise ValueError(f"{folder}: {error}") from error

    def save_pretrained(self, path: str | Path) -> None:
        """Writes the files transformers' `Speech2TextTokenizer.from_pretrained` reads."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / S2T_SPM_NAME).write_bytes(self.sp_model)
        tokenizer_config = {
            "tokenizer_class": "Speech2TextTokenizer",
            "do_upper_case": self.do_upper_case,
            "do_lower_case": self.do_lower_case,
            "lang_codes": self.lang_codes,
            "tgt_lang": self.language,
            "model_max_length": 1024,
            "sp_model_kwargs": {},
            **S2T_SPECIAL_TOKENS,
        }
        files = {
            S2T_VOCAB_NAME: self.vocab,
            TOKENIZER_CONFIG_NAME: tokenizer_config,
            SPECIAL_TOKENS_MAP_NAME: dict(S2T_SPECIAL_TOKENS),
        }
        tokenization.write_json_files(folder, files)

    def encode(self, text: str) -> list[int]:
        """Text tokens only: no prompt, no end token; pieces outside `vocab.json` become `<unk>`."""
        if self.do_lower_case or self.do_upper_case:
            text = text.lower()
        return [self.vocab.get(piece, self.unk_id) for piece in self.processor.encode(text, out_type=str)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` with the special and language tokens dropped."""
        pieces = [self.pieces[int(i)] for i in ids if int(i) not in self._special_ids and int(i) in self.pieces]
        text = self.processor.decode_pieces(pieces)
        return text.upper() if self.do_upper_case else text

    def __len__(self) -> int:
        return len(self.vocab)


def train_s2t_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 1000,
    model_type: str = "unigram",
    lowercase: bool = False,
    character_coverage: float = 1.0,
) -> Speech2TextTokenizer:
    """Trains a SentencePiece model on transcripts as fairseq's S2T `gen_vocab` does (full character coverage,
    `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3), on one thread and every sentence, so the same texts always give
    the same vocabulary. `vocab_size` counts the four special tokens; a `char` model takes what the texts hold
    up to `vocab_size`. `lowercase` trains on lower-cased texts and makes the tokenizer lower-case its input."""
    if model_type not in S2T_MODEL_TYPES:
        raise ValueError(f"model_type={model_type!r} is not one of {S2T_MODEL_TYPES}")
    texts = [text.strip().lower() if lowercase else text.strip() for text in texts]
    texts = [text for text in texts if text]
    if not texts:
        raise ValueError("no non-empty transcripts to train a SentencePiece vocabulary on")
    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type=model_type,
            character_coverage=character_coverage, bos_id=0, pad_id=1, eos_id=2, unk_id=3, num_threads=1,
            hard_vocab_limit=model_type != "char", minloglevel=2,
        )
    except RuntimeError as error:  # e.g. "Vocabulary size too high (500). Please set it to a value <= 153."
        message = str(error).split("] ")[-1]
        raise ValueError(f"SentencePiece training on {len(texts)} transcripts failed: {message}") from error
    return Speech2TextTokenizer(model.getvalue(), do_lower_case=lowercase)


def train_s2t_tokenizer_on_corpus(
    corpus: CorpusSpec | Mapping,
    vocab_size: int = 1000,
    model_type: str = "unigram",
    lowercase: bool = False,
) -> Speech2TextTokenizer:
    """`train_s2t_tokenizer` on the transcripts of a corpus (a `CorpusSpec` or its Hydra dict)."""
    spec = CorpusSpec.coerce(corpus)
    try:
        return train_s2t_tokenizer(tokenization.corpus_transcripts(spec), vocab_size, model_type, lowercase)
    except ValueError as error:
        raise ValueError(f"{spec.path}: {error}") from error


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m speechtrain.models.speech2text.tokenizer CORPUS_PATH OUT_DIR`: train a Speech2Text SentencePiece
    vocabulary once, e.g. for LibriSpeech, and point `tokenizer=s2t_pretrained tokenizer.path=OUT_DIR` at it."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m speechtrain.models.speech2text.tokenizer",
                                     description="Train a Speech2Text SentencePiece vocabulary on a corpus.")
    parser.add_argument("corpus", help="corpus folder (or manifest file)")
    parser.add_argument("out_dir", help="folder for sentencepiece.bpe.model, vocab.json, tokenizer_config.json")
    parser.add_argument("--format", default="librispeech", help="corpus format: ljspeech, librispeech, manifest, hf")
    parser.add_argument("--vocab-size", type=int, default=10000)
    parser.add_argument("--model-type", choices=S2T_MODEL_TYPES, default="unigram")
    parser.add_argument("--lowercase", action="store_true", help="lower-case transcripts (fairseq's LibriSpeech)")
    args = parser.parse_args(argv)
    try:
        tokenizer = train_s2t_tokenizer_on_corpus(
            {"format": args.format, "path": args.corpus}, args.vocab_size, args.model_type, args.lowercase
        )
    except (FileNotFoundError, ValueError) as error:
        parser.exit(1, f"error: {error}\n")
    tokenizer.save_pretrained(args.out_dir)
    print(f"wrote a {len(tokenizer)}-token {args.model_type} vocabulary to {args.out_dir}")


if __name__ == "__main__":
    main()
