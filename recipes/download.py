"""Download and unpack a corpus archive with a progress bar; shared by the per-corpus prepare scripts.

Resumable: a finished archive is recognised by its size and not fetched again; an unpacked archive
leaves a `.done` marker beside it.
"""

from __future__ import annotations

import tarfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from speechtrain.data.corpora import Utterance, write_manifest_with_durations


def download(url: str, target: Path) -> Path:
    """Fetch `url` to `target` unless a complete copy is already there."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url) as response:
        size = int(response.headers.get("Content-Length", 0))
        if target.is_file() and target.stat().st_size == size:
            return target
        partial = target.with_suffix(target.suffix + ".part")
        with open(partial, "wb") as out, tqdm(total=size, unit="B", unit_scale=True, desc=target.name) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
    partial.rename(target)
    return target


def extract(archive: Path, destination: Path) -> None:
    """Unpack a .tar.gz once (a `.done` marker records it)."""
    marker = destination / f".{archive.name}.done"
    if marker.exists():
        return
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in tqdm(members, desc=f"unpacking {archive.name}", unit="file"):
            tar.extract(member, destination, filter="data")
    marker.touch()


def prepare_openslr_subsets(
    root: Path, subsets: list[str], url: str, corpus_folder: str, reader: Callable[[Path], list[Utterance]],
    fetch: bool = True,
) -> list[Path]:
    """For each subset: download (optionally) `url.format(subset=...)`, unpack it into `root`, read
    `root/corpus_folder/subset` with `reader` and write `root/corpus_folder/subset.jsonl` with durations.
    Returns the manifest paths."""
    manifests = []
    for subset in subsets:
        if fetch:
            extract(download(url.format(subset=subset), root / "downloads" / f"{subset}.tar.gz"), root)
        manifest = root / corpus_folder / f"{subset}.jsonl"
        write_manifest_with_durations(reader(root / corpus_folder / subset), manifest, subset)
        manifests.append(manifest)
    return manifests
