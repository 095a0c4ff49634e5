"""The files of a Hugging Face tokenizer folder, read and written the same way by every family's tokenizer.

Each family's `tokenizer.py` (Whisper, Speech2Text, VITS, Bark) keeps its own vocabulary format; what they share
is here: the common file names, the check that a folder holds the files a tokenizer needs, reading an optional
`tokenizer_config.json`, writing JSON files as transformers does, and the transcripts a vocabulary is trained on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from speechtrain.data.corpora import CorpusSpec, read_corpus
from speechtrain.errors import DataError

TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_NAME = "special_tokens_map.json"


def require_files(folder: Path, names: Sequence[str], kind: str) -> None:
    """Raises a FileNotFoundError naming the first of `names` missing from `folder` and all that a `kind`
    tokenizer folder needs."""
    for name in names:
        if not (folder / name).is_file():
            needed = " and ".join(names)
            raise FileNotFoundError(f"{folder / name}: not found; a {kind} tokenizer folder needs {needed}")


def read_json(path: Path) -> Any:
    """The JSON in `path`; invalid JSON raises a DataError naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: invalid JSON ({error})") from error


def read_optional_json(path: Path) -> dict[str, Any]:
    """`read_json` of a file a folder may lack (`tokenizer_config.json` in every family): `{}` without it."""
    return read_json(path) if path.is_file() else {}


def write_json_files(folder: Path, files: Mapping[str, Any]) -> None:
    """Writes each `{name: content}` as indented UTF-8 JSON, as transformers' `save_pretrained` does."""
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def token_text(token: Any) -> str | None:
    """A special token as transformers writes it in `tokenizer_config.json`: a string or an `AddedToken` dict
    with its `content`."""
    return token.get("content") if isinstance(token, dict) else token


def corpus_transcripts(corpus: CorpusSpec | Mapping) -> Iterator[str]:
    """The stripped transcripts of a corpus (a `CorpusSpec` or its Hydra dict), which the corpus trainers of the
    Whisper and Speech2Text vocabularies learn from."""
    return (utterance.text.strip() for utterance in read_corpus(corpus))
