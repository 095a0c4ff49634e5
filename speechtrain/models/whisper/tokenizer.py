"""ASR tokenizers. `WhisperTokenizer` wraps a `tokenizers.Tokenizer` (tokenizer.json) and takes every
convention that differs between English-only and multilingual checkpoints (decoder start token, language
and task tokens, no-timestamps token, suppressed tokens) from `generation_config.json`, never from constants.
`train_whisper_tokenizer` builds a small byte-level BPE with Whisper's special tokens for from-scratch recipes.
`Speech2TextTokenizer` is fairseq's SentencePiece vocabulary in transformers' folder layout; `train_s2t_tokenizer`
trains one (also from the command line: `python -m speechtrain.data.tokenizers --help`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import sentencepiece
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from speechtrain.data.corpora import CorpusSpec, read_corpus

TOKENIZER_NAME = "tokenizer.json"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_NAME = "special_tokens_map.json"
GENERATION_CONFIG_NAME = "generation_config.json"
TASKS = ("transcribe", "translate")
CONTROL_TOKENS_AFTER_LANGUAGES = (
    "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"
)


class WhisperTokenizer:
    """Text <-> token ids plus the decoder prompt.

    Attributes:
        prefix_ids: the forced decoder prompt: `[start, <|lang|>, <|task|>, <|notimestamps|>]` for multilingual
            checkpoints, `[start, <|notimestamps|>]` for English-only ones.
        eos_id, pad_id: end and padding ids (both `<|endoftext|>` in Whisper).
        suppress_tokens, begin_suppress_tokens: ids the decoder must never / not first generate.
        generation_config: the generation_config.json dict.
        add_prefix_space: `encode` puts a space before a text that has none, so "Hello" becomes " Hello" (one
            token "ĠHello", as openai's Whisper was trained and still emits it). Off by default, as transformers'
            `WhisperTokenizer` and its fine-tuning recipes (`tokenizer(text).input_ids` gives "Hello"); saved as
            `add_prefix_space` in tokenizer_config.json, which transformers reads.
    """

    def __init__(self, tokenizer: Tokenizer, generation_config: dict[str, Any], language: str | None = None,
                 task: str = "transcribe", add_prefix_space: bool = False):
        self.tokenizer = tokenizer
        self.add_prefix_space = add_prefix_space
        self.generation_config = dict(generation_config)
        for key in ("decoder_start_token_id", "eos_token_id", "no_timestamps_token_id"):
            if self.generation_config.get(key) is None:
                raise ValueError(f"{GENERATION_CONFIG_NAME} has no {key!r}; it is needed to build the decoder prompt")
        eos = self.generation_config["eos_token_id"]
        self.eos_id: int = eos[0] if isinstance(eos, list) else eos
        self.pad_id: int = self.generation_config.get("pad_token_id", self.eos_id)
        self.suppress_tokens: list[int] = list(self.generation_config.get("suppress_tokens") or [])
        self.begin_suppress_tokens: list[int] = list(self.generation_config.get("begin_suppress_tokens") or [])
        lang_to_id = self.generation_config.get("lang_to_id") or {}
        self.is_multilingual = bool(self.generation_config.get("is_multilingual", bool(lang_to_id)))
        self.language, self.task = self._resolve_language(language, lang_to_id), task
        prompt = [self.generation_config["decoder_start_token_id"]]
        if self.is_multilingual:
            task_to_id = self.generation_config.get("task_to_id") or {}
            if task not in task_to_id:
                raise ValueError(f"task={task!r} is not in {GENERATION_CONFIG_NAME} task_to_id {sorted(task_to_id)}")
            prompt += [lang_to_id[f"<|{self.language}|>"], task_to_id[task]]
        elif task != "transcribe":
            raise ValueError(f"task={task!r} needs a multilingual checkpoint; this one is English-only")
        self.prefix_ids: list[int] = prompt + [self.generation_config["no_timestamps_token_id"]]
        self._control_ids = set(tokenizer.get_added_tokens_decoder())

    def _resolve_language(self, language: str | None, lang_to_id: dict[str, int]) -> str | None:
        """Language code from the argument, else generation_config's `language`, else its
        `forced_decoder_ids`, else the only language it knows."""
        if not self.is_multilingual:
            if language not in (None, "en", "<|en|>"):
                raise ValueError(f"language={language!r} needs a multilingual checkpoint; this one is English-only")
            return None
        id_to_lang = {token_id: token for token, token_id in lang_to_id.items()}
        forced = self.generation_config.get("forced_decoder_ids") or []
        candidates = [
            language,
            self.generation_config.get("language"),
            id_to_lang.get(forced[0][1]) if forced and forced[0][0] == 1 else None,
            next(iter(lang_to_id)) if len(lang_to_id) == 1 else None,
        ]
        chosen = next((candidate for candidate in candidates if candidate is not None), None)
        codes = sorted(token.strip("<|>") for token in lang_to_id)
        if chosen is None:
            raise ValueError(f"this multilingual tokenizer needs language=..., one of {codes}")
        code = chosen.strip("<|>")
        if f"<|{code}|>" not in lang_to_id:
            raise ValueError(f"language={chosen!r} is not in {GENERATION_CONFIG_NAME} lang_to_id; use one of {codes}")
        return code

    @classmethod
    def from_pretrained(cls, path: str | Path, language: str | None = None, task: str = "transcribe",
                        add_prefix_space: bool | None = None) -> WhisperTokenizer:
        """Reads `tokenizer.json` and `generation_config.json` from a Whisper folder; `add_prefix_space=None` takes
        tokenizer_config.json's value (false in openai/whisper-*), false without one."""
        folder = Path(path)
        for name in (TOKENIZER_NAME, GENERATION_CONFIG_NAME):
            if not (folder / name).is_file():
                raise FileNotFoundError(
                    f"{folder / name}: not found; a Whisper tokenizer folder needs {TOKENIZER_NAME} and "
                    f"{GENERATION_CONFIG_NAME}"
                )
        tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_NAME))
        generation_config = json.loads((folder / GENERATION_CONFIG_NAME).read_text())
        if add_prefix_space is None:
            config_path = folder / TOKENIZER_CONFIG_NAME
            tokenizer_config = json.loads(config_path.read_text()) if config_path.is_file() else {}
            add_prefix_space = bool(tokenizer_config.get("add_prefix_space", False))
        try:
            return cls(tokenizer, generation_config, language=language, task=task, add_prefix_space=add_prefix_space)
        except ValueError as error:
            raise ValueError(f"{folder}: {error}") from error

    def save_pretrained(self, path: str | Path) -> None:
        """Writes tokenizer.json, tokenizer_config.json, special_tokens_map.json (read by transformers'
        `WhisperTokenizerFast`) and generation_config.json (with the chosen language and task)."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(folder / TOKENIZER_NAME))
        eos, pad = self.tokenizer.id_to_token(self.eos_id), self.tokenizer.id_to_token(self.pad_id)
        special_tokens = {"bos_token": eos, "eos_token": eos, "unk_token": eos, "pad_token": pad}
        tokenizer_config = {
            "tokenizer_class": "WhisperTokenizer",
            "add_prefix_space": self.add_prefix_space,
            "errors": "replace",
            "model_max_length": 1024,
            **special_tokens,
        }
        additional = [self.tokenizer.id_to_token(i) for i in sorted(self._control_ids)]
        generation_config = dict(self.generation_config)
        if self.is_multilingual:
            generation_config.update(language=self.language, task=self.task)
        files = {
            TOKENIZER_CONFIG_NAME: tokenizer_config,
            SPECIAL_TOKENS_MAP_NAME: {**special_tokens, "additional_special_tokens": additional},
            GENERATION_CONFIG_NAME: generation_config,
        }
        for name, content in files.items():
            (folder / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")

    def encode(self, text: str) -> list[int]:
        """Text tokens only: no prompt, no end token; with `add_prefix_space`, of " " + text unless it starts with
        whitespace."""
        if self.add_prefix_space and not text[:1].isspace():
            text = " " + text
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` with every control token (`<|...|>`: prompt, end, timestamps) dropped."""
        return self.tokenizer.decode([int(i) for i in ids if int(i) not in self._control_ids])

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)


def train_whisper_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 512,
    multilingual: bool = False,
    languages: Sequence[str] = ("en",),
    add_prefix_space: bool = False,
) -> WhisperTokenizer:
    """Trains a byte-level BPE (GPT-2 pre-tokenisation, as Whisper) on transcripts and appends Whisper's
    control tokens, with a matching generation config. `vocab_size` counts the control tokens; a small
    corpus may give fewer merges. Multilingual tokenizers prompt with the first of `languages`. With
    `add_prefix_space` the merges are learnt on the texts as `encode` will see them (a space before each)."""
    languages = list(languages)
    if not languages or len(set(languages)) != len(languages):
        raise ValueError(f"languages must be non-empty and without repeats, got {languages}")
    control = ["<|endoftext|>", "<|startoftranscript|>", *(f"<|{code}|>" for code in languages),
               *CONTROL_TOKENS_AFTER_LANGUAGES]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(control):
        raise ValueError(
            f"vocab_size={vocab_size} is too small: the byte alphabet ({len(alphabet)}) and Whisper's control "
            f"tokens ({len(control)}) need at least {len(alphabet) + len(control)}"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(control), initial_alphabet=alphabet, show_progress=False
    )
    if add_prefix_space:
        texts = (text if text[:1].isspace() else " " + text for text in texts)
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in control])

    ids = {token: tokenizer.token_to_id(token) for token in control}
    eot = ids["<|endoftext|>"]
    generation_config = {
        "decoder_start_token_id": ids["<|startoftranscript|>"],
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "is_multilingual": multilingual,
        "lang_to_id": {f"<|{code}|>": ids[f"<|{code}|>"] for code in languages} if multilingual else {},
        "task_to_id": {task: ids[f"<|{task}|>"] for task in TASKS},
        "no_timestamps_token_id": ids["<|notimestamps|>"],
        "prev_sot_token_id": ids["<|startofprev|>"],
        "return_timestamps": False,
        # as openai/whisper: never generate prompt tokens, and do not start with a blank or the end token
        "suppress_tokens": [ids[token] for token in ("<|startoftranscript|>", "<|translate|>", "<|transcribe|>",
                                                     "<|startoflm|>", "<|startofprev|>", "<|nospeech|>")],
        "begin_suppress_tokens": [*tokenizer.encode(" ", add_special_tokens=False).ids, eot],
    }
    return WhisperTokenizer(tokenizer, generation_config, language=languages[0] if multilingual else None,
                            add_prefix_space=add_prefix_space)


def train_whisper_tokenizer_on_corpus(
    corpus: CorpusSpec | Mapping,
    vocab_size: int = 512,
    multilingual: bool = False,
    languages: Sequence[str] = ("en",),
    add_prefix_space: bool = False,
) -> WhisperTokenizer:
    """`train_whisper_tokenizer` on the stripped transcripts of a corpus (a `CorpusSpec` or its Hydra dict)."""
    texts = (utterance.text.strip() for utterance in read_corpus(corpus))
    return train_whisper_tokenizer(texts, vocab_size=vocab_size, multilingual=multilingual, languages=languages,
                                   add_prefix_space=add_prefix_space)


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
        for name in (S2T_SPM_NAME, S2T_VOCAB_NAME):
            if not (folder / name).is_file():
                raise FileNotFoundError(
                    f"{folder / name}: not found; a Speech2Text tokenizer folder needs {S2T_SPM_NAME} and "
                    f"{S2T_VOCAB_NAME}"
                )
        config_path = folder / TOKENIZER_CONFIG_NAME
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        try:
            return cls(
                (folder / S2T_SPM_NAME).read_bytes(),
                json.loads((folder / S2T_VOCAB_NAME).read_text()),
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
        for name, content in files.items():
            (folder / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")

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
        return train_s2t_tokenizer((u.text for u in read_corpus(spec)), vocab_size, model_type, lowercase)
    except ValueError as error:
        raise ValueError(f"{spec.path}: {error}") from error


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m speechtrain.data.tokenizers CORPUS_PATH OUT_DIR`: train a Speech2Text SentencePiece vocabulary
    once, e.g. for LibriSpeech, and point `tokenizer=s2t_pretrained tokenizer.path=OUT_DIR` at it."""
    import argparse

    parser = argparse.ArgumentParser(description="Train a Speech2Text SentencePiece vocabulary on a corpus.")
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
