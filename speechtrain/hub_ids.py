"""Hugging Face Hub ids where speechtrain expects a local folder (a model to fine-tune or load, a dataset)."""

from __future__ import annotations

import os
import re
from pathlib import Path

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+(@[\w./-]+)?")  # org/name, optionally @revision


def resolve_pretrained(source: str | Path, repo_type: str = "model") -> str:
    """A local folder for `source`: the folder itself, or a Hugging Face Hub id (`org/name[@revision]`) that is not
    a local path, fetched into the Hub cache (or found there) with `huggingface_hub.snapshot_download`; `repo_type`
    `dataset` for a dataset repository.

    The environment is read at each call, so that it is the run's: `HF_HUB_OFFLINE=1` looks in the cache only,
    `HF_HUB_CACHE` (or `HF_HOME`) says where the cache is, `HF_TOKEN` opens gated models."""
    source = str(source)
    if Path(source).exists() or not HUB_ID.fullmatch(source):
        return source
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo_id, _, revision = source.partition("@")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    cache_dir = os.environ.get("HF_HUB_CACHE") or (
        str(Path(os.environ["HF_HOME"]) / "hub") if os.environ.get("HF_HOME") else None)
    try:
        return snapshot_download(repo_id, repo_type=repo_type, revision=revision or None, cache_dir=cache_dir,
                                 local_files_only=offline)
    except LocalEntryNotFoundError as error:
        flag = "--repo-type dataset " if repo_type == "dataset" else ""
        where = "HF_HUB_OFFLINE=1 and it is not in the Hub cache" if offline else "it could not be downloaded"
        raise FileNotFoundError(
            f"{source}: neither a local folder nor a usable Hugging Face Hub id: {where} "
            f"({cache_dir or 'the default cache'}); download it with `huggingface-cli download {flag}{repo_id}` "
            "or give a local folder") from error
    except HfHubHTTPError as error:
        raise FileNotFoundError(f"{source}: the Hugging Face Hub refused it ({error}); check the id, or HF_TOKEN "
                                "for a gated model") from error
