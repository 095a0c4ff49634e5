"""Whisper's tokenizer. `WhisperTokenizer` wraps a `tokenizers.Tokenizer` (tokenizer.json) and takes every
convention that differs between English-only and multilingual checkpoints (decoder start token, language
and task tokens, no-timestamps token, suppressed tokens) from `generation_config.json`, never from constants.
`train_whisper_tokenizer` builds a small byte-level BPE with Whisper's special tokens for from-scratch recipes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from speechtrain.data.corpora import CorpusSpec
from speechtrain.models import tokenization
from speechtrain.models.tokenization import SPECIAL_TOKENS_MAP_NAME, TOKENIZER_CONFIG_NAME
from speechtrain.models.whisper import timestamps

TOKENIZER_NAME = "tokenizer.json"
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

    new_token_sources: dict[int, list[int]] = {}  # added token id -> the ids whose embeddings initialise it

    @classmethod
    def from_pretrained(cls, path: str | Path, language: str | None = None, task: str = "transcribe",
                        add_prefix_space: bool | None = None, add_languages: Sequence[str] = ()) -> WhisperTokenizer:
        """Reads `tokenizer.json` and `generation_config.json` from a Whisper folder; `add_prefix_space=None` takes
        tokenizer_config.json's value (false in openai/whisper-*), false without one.

        `add_languages` (codes such as `yue`) adds a `<|code|>` token per language the checkpoint lacks, after its
        vocabulary, and records it in `lang_to_id`; a model built with this tokenizer grows its embeddings for it,
        each starting from the mean of the checkpoint's language tokens, and exports with it. The new id comes after
        the timestamp tokens, so train and decode such a language without timestamps."""
        folder = Path(path)
        tokenization.require_files(folder, (TOKENIZER_NAME, GENERATION_CONFIG_NAME), "Whisper")
        tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_NAME))
        generation_config = tokenization.read_json(folder / GENERATION_CONFIG_NAME)
        try:
            new_tokens = _add_language_tokens(tokenizer, generation_config, add_languages)
        except ValueError as error:
            raise ValueError(f"{folder}: {error}") from error
        if add_prefix_space is None:
            tokenizer_config = tokenization.read_optional_json(folder / TOKENIZER_CONFIG_NAME)
            add_prefix_space = bool(tokenizer_config.get("add_prefix_space", False))
        try:
            loaded = cls(tokenizer, generation_config, language=language, task=task, add_prefix_space=add_prefix_space)
        except ValueError as error:
            raise ValueError(f"{folder}: {error}") from error
        loaded.new_token_sources = new_tokens
        return loaded

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
        tokenization.write_json_files(folder, files)

    def prompt_ids(self, text: str) -> list[int]:
        """`<|startofprev|>` and the tokens of `text` with one leading space, as transformers' `get_prompt_ids`,
        keeping the last `max_prompt_tokens` text tokens as openai/whisper does (half the decoder's positions)."""
        previous = self.tokenizer.token_to_id("<|startofprev|>")
        if previous is None:
            raise ValueError("this tokenizer has no <|startofprev|> token: it cannot condition on a prompt")
        ids = self.tokenizer.encode(" " + text.strip(), add_special_tokens=False).ids
        return [previous, *ids[-self.max_prompt_tokens:]]

    max_prompt_tokens = 223  # openai/whisper: n_text_ctx // 2 - 1 with 448 positions

    def prefix_for(self, language: str | None, timestamps: bool = False) -> list[int]:
        """The decoder prompt for an utterance in `language` (the tokenizer's own prompt for None, or for an
        English-only checkpoint and English); with `timestamps`, without `<|notimestamps|>`."""
        prefix = list(self.prefix_ids)
        if not (language is None or language.strip("<|>") == self.language or (
                not self.is_multilingual and language.strip("<|>") == "en")):
            lang_to_id = self.generation_config.get("lang_to_id") or {}
            code = self._resolve_language(language, lang_to_id)
            prefix = [prefix[0], lang_to_id[f"<|{code}|>"], *prefix[2:]]
        if timestamps:
            self.timestamp_begin  # noqa: B018 - raises for a vocabulary without timestamp tokens
            prefix = [token for token in prefix if token != self.generation_config["no_timestamps_token_id"]]
        return prefix

    @property
    def timestamp_begin(self) -> int:
        """The id of `<|0.00|>` (a ValueError for a vocabulary without timestamp tokens)."""
        return timestamps.timestamp_begin(self)

    @property
    def timestamp_prefix_ids(self) -> list[int]:
        """The decoder prompt that asks for timestamps: `prefix_ids` without `<|notimestamps|>`."""
        return self.prefix_for(None, timestamps=True)

    def timestamp_rules(self, begin_index: int) -> timestamps.TimestampRules:
        """The logits processor that makes decoding emit well-formed timestamps after `begin_index` prompt ids."""
        return timestamps.TimestampRules(self, begin_index)

    def timestamp_segments(self, ids: Sequence[int], offset: float = 0.0) -> list[Any]:
        """The complete timed segments of generated ids, `offset` seconds added."""
        return timestamps.segments_from_ids(self, ids, offset)

    def timestamped_ids(self, segments: Sequence[Mapping[str, Any]]) -> list[int]:
        """Training ids of (start, end, text) segments: `<|start|> text <|end|>` each."""
        return timestamps.timestamped_ids(self, segments)

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


def _add_language_tokens(tokenizer: Tokenizer, generation_config: dict[str, Any], codes: Sequence[str]
                         ) -> dict[int, list[int]]:
    """Adds `<|code|>` for each new language code to `tokenizer` and to `generation_config["lang_to_id"]` (in
    place); returns {new id: the existing language ids}. Codes the checkpoint knows are left as they are."""
    lang_to_id = dict(generation_config.get("lang_to_id") or {})
    if codes and not generation_config.get("is_multilingual", bool(lang_to_id)):
        raise ValueError(f"add_languages={list(codes)}: an English-only checkpoint has no language token in its "
                         "prompt; start from a multilingual one")
    known, added = sorted(lang_to_id.values()), {}
    for code in codes:
        token = f"<|{code.strip('<|>')}|>"
        if token in lang_to_id:
            continue
        if tokenizer.token_to_id(token) is not None:
            raise ValueError(f"{token} is already a token but not in lang_to_id")
        tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False)])
        lang_to_id[token] = added_id = tokenizer.token_to_id(token)
        added[added_id] = known
    generation_config["lang_to_id"] = lang_to_id
    return added


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
    return train_whisper_tokenizer(tokenization.corpus_transcripts(corpus), vocab_size=vocab_size,
                                   multilingual=multilingual, languages=languages, add_prefix_space=add_prefix_space)
