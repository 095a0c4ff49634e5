"""Download, verify and unpack a corpus archive; shared by the per-corpus prepare scripts.

A download goes to `ARCHIVE.part` and is renamed to `ARCHIVE` only once it is whole and matches the checksum
published for it (the prepare scripts keep those beside their URLs, openslr's in an `md5sum.txt`): a truncated or
tampered archive is never unpacked. An interrupted download resumes from the partial file where the server honours
`Range` requests and restarts cleanly where it does not; a mismatch deletes the file and names the archive. An
unpacked archive leaves a `.done` marker beside its contents, so a rerun neither downloads nor unpacks it again.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import logging
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from tqdm import tqdm

from speechtrain.data.corpora import Utterance, write_manifest_with_durations
from speechtrain.errors import DataError

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
HASH_LENGTHS = {"md5": 32, "sha256": 64}


def parse_checksum(checksum: str) -> tuple[str, str]:
    """`"md5:HEX"` or `"sha256:HEX"` -> (algorithm, lower-case hex digest); anything else is a bug in a table."""
    algorithm, _, digest = checksum.partition(":")
    if HASH_LENGTHS.get(algorithm) != len(digest) or any(c not in "0123456789abcdef" for c in digest.lower()):
        raise ValueError(f"checksum {checksum!r} is not 'md5:<32 hex digits>' or 'sha256:<64 hex digits>'")
    return algorithm, digest.lower()


def read_md5sums(path: Path) -> dict[str, str]:
    """An `md5sum`-format file (`HEX  SUBSET.tar.gz` per line, as openslr publishes it) -> `{subset: "md5:HEX"}`,
    each checked by `parse_checksum`."""
    checksums = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.strip().partition("  ")
        if line.strip():
            checksums[name.removesuffix(".tar.gz")] = "md5:" + parse_checksum("md5:" + digest)[1]
    return checksums


def file_digest(path: Path, algorithm: str) -> str:
    """The hex digest of a file, read in chunks (archives are many gigabytes)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as file, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                        desc=f"checking {path.name}", leave=False) as bar:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def verify(path: Path, checksum: str, archive_name: str, url: str) -> None:
    """Deletes `path` and raises a `DataError` naming the archive if its digest is not `checksum`."""
    algorithm, expected = parse_checksum(checksum)
    actual = file_digest(path, algorithm)
    if actual != expected:
        size = path.stat().st_size
        path.unlink()
        raise DataError(
            f"archive {archive_name} ({url}) failed its {algorithm} check: expected {expected}, got {actual} over "
            f"{size} bytes, so it is truncated or not the published file; deleted {path}, run again to download "
            "it afresh"
        )


def _fetch(url: str, partial: Path) -> int | None:
    """Appends the rest of `url` to `partial` (a `Range` request when it already holds bytes); returns the total
    size the server announced, or None if it did not. A server that ignores the range sends the whole file, which
    replaces the partial one."""
    offset = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing left to send: the partial file is at least the whole size
            return offset
        raise
    with response:
        if response.status == 206:
            start = int(response.headers.get("Content-Range", "bytes 0-").split()[1].split("-")[0])
            if start != offset:
                raise DataError(f"{url}: asked for bytes from {offset}, the server sent bytes from {start}")
            mode = "ab"
        else:
            offset, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with open(partial, mode) as out, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                              desc=partial.name) as bar:
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                bar.update(len(chunk))
    return total


def download(url: str, target: Path, checksum: str, attempts: int = 5) -> Path:
    """`url` into `target`, verified against `checksum` (`"md5:HEX"`, `"sha256:HEX"`); a `target` already there
    is verified too (an older run may have left a truncated one). Interrupted transfers are resumed up to
    `attempts` times; after that the partial file stays for the next run to resume."""
    parse_checksum(checksum)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_file():
        verify(target, checksum, target.name, url)
        return target
    partial = target.with_name(target.name + ".part")
    for attempt in range(1, attempts + 1):
        try:
            total = _fetch(url, partial)
        except (OSError, http.client.HTTPException) as error:  # URLError, reset connections and timeouts included
            if isinstance(error, urllib.error.HTTPError) and error.code < 500 and error.code != 408:
                raise DataError(f"{url}: the server answered {error.code} {error.reason}") from error
            problem = f"{type(error).__name__}: {error}"
        else:
            size = partial.stat().st_size
            if total is None or size >= total:
                break
            problem = f"the connection closed after {size} of {total} bytes"
        log.warning("downloading %s: %s (attempt %d of %d)", url, problem, attempt, attempts)
    else:
        raise DataError(f"downloading {url} failed {attempts} times (last: {problem}); {partial} keeps what arrived, "
                        "run again to resume")
    verify(partial, checksum, target.name, url)
    partial.replace(target)
    return target


def extract(archive: Path, destination: Path) -> None:
    """Unpack a (verified) tar archive once (a `.done` marker records it); members may not leave `destination`."""
    marker = destination / f".{archive.name}.done"
    if marker.exists():
        return
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in tqdm(members, desc=f"unpacking {archive.name}", unit="file"):
            tar.extract(member, destination, filter="data")
    marker.touch()


def fetch_and_extract(url: str, archive: Path, destination: Path, checksum: str) -> None:
    """Download (verified) and unpack `url` unless an earlier run has unpacked it already."""
    if (destination / f".{archive.name}.done").exists():
        return
    extract(download(url, archive, checksum), destination)


def prepare_openslr_subsets(
    root: Path, subsets: list[str], url: str, checksums: Mapping[str, str], corpus_folder: str,
    reader: Callable[[Path], list[Utterance]], fetch: bool = True,
) -> list[Path]:
    """For each subset: download (optionally) `url.format(subset=...)`, verify it against `checksums[subset]`,
    unpack it into `root`, read `root/corpus_folder/subset` with `reader` and write
    `root/corpus_folder/subset.jsonl` with durations. Returns the manifest paths."""
    manifests = []
    for subset in subsets:
        if fetch:
            fetch_and_extract(url.format(subset=subset), root / "downloads" / f"{subset}.tar.gz", root,
                              checksums[subset])
        manifest = root / corpus_folder / f"{subset}.jsonl"
        write_manifest_with_durations(reader(root / corpus_folder / subset), manifest, subset)
        manifests.append(manifest)
    return manifests


@dataclass(frozen=True)
class OpenSLRCorpus:
    """A corpus that openslr.org publishes as one `SUBSET.tar.gz` per subset, its md5 sums in an `md5sum.txt` (kept
    beside the corpus's prepare script): what the script downloads, checks, unpacks and writes manifests of, and
    the command-line options it takes."""

    resource: int  # openslr's number: the archives are https://www.openslr.org/resources/<resource>/SUBSET.tar.gz
    folder: str  # they unpack into ROOT/<folder>/SUBSET
    reader: Callable[[Path], list[Utterance]]  # reads one unpacked subset
    md5sum_file: Path

    @cached_property
    def checksums(self) -> dict[str, str]:
        """`{subset: "md5:HEX"}` for every subset openslr publishes."""
        return read_md5sums(self.md5sum_file)

    @property
    def url(self) -> str:
        return f"https://www.openslr.org/resources/{self.resource}/{{subset}}.tar.gz"

    def prepare(self, root: Path, subsets: list[str], fetch: bool = True) -> list[Path]:
        """`prepare_openslr_subsets` for this corpus: download (optionally), unpack and write one manifest per
        subset; returns the manifest paths."""
        return prepare_openslr_subsets(root, subsets, self.url, self.checksums, self.folder, self.reader, fetch)

    def argument_parser(self, description: str, option: str, default: list[str]) -> argparse.ArgumentParser:
        """The options every openslr prepare script takes: --root, `option` (the subsets to prepare, `default`
        unless given) and --no-download."""
        parser = argparse.ArgumentParser(description=description)
        parser.add_argument("--root", type=Path, default=Path("data"))
        parser.add_argument(option, nargs="+", choices=tuple(self.checksums), default=default)
        parser.add_argument("--no-download", action="store_true",
                            help=f"the {option.removeprefix('--')} are already unpacked under --root")
        return parser
