"""LibriSpeech for `recipe=whisper_librispeech` (and later s2t_librispeech).

    python recipes/librispeech/prepare.py --root data --parts train-clean-100 dev-clean test-clean
    python recipes/librispeech/prepare.py --root data --no-download   # already unpacked by hand

Downloads the parts from openslr.org (resumable, each checked against openslr's md5 sum), unpacks them
into `<root>/LibriSpeech/<part>`, and writes a NeMo-style manifest per part (`<root>/LibriSpeech/<part>.jsonl`,
with durations read from the flac headers) so that training starts without scanning the folders again:
`data.train.format=manifest data.train.path=data/LibriSpeech/train-clean-100.jsonl`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from download import prepare_openslr_subsets, read_md5sums  # noqa: E402

from speechtrain.data.corpora import read_librispeech  # noqa: E402

URL = "https://www.openslr.org/resources/12/{subset}.tar.gz"
# openslr's published md5 sums (https://www.openslr.org/resources/12/md5sum.txt, kept beside this script);
# every archive is checked before it is unpacked.
CHECKSUMS = read_md5sums(Path(__file__).with_name("md5sum.txt"))
PARTS = tuple(CHECKSUMS)


def prepare_librispeech(root: Path, parts: list[str], fetch: bool = True) -> list[Path]:
    """Download (optionally), unpack and write one manifest per part; returns the manifest paths."""
    return prepare_openslr_subsets(root, parts, URL, CHECKSUMS, "LibriSpeech", read_librispeech, fetch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("data"))
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=["train-clean-100", "dev-clean", "test-clean"])
    parser.add_argument("--no-download", action="store_true", help="the parts are already unpacked under --root")
    args = parser.parse_args()
    prepare_librispeech(args.root, args.parts, fetch=not args.no_download)


if __name__ == "__main__":
    main()
