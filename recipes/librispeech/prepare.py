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
from download import prepare_openslr_subsets  # noqa: E402

from speechtrain.data.corpora import read_librispeech  # noqa: E402

URL = "https://www.openslr.org/resources/12/{subset}.tar.gz"
# openslr's published md5 sums (https://www.openslr.org/resources/12/md5sum.txt); every archive is checked before
# it is unpacked.
CHECKSUMS = {
    "dev-clean": "md5:42e2234ba48799c1f50f24a7926300a1",
    "dev-other": "md5:c8d0bcc9cca99d4f8b62fcc847357931",
    "test-clean": "md5:32fa31d27d2e1cad72775fee3f4849a9",
    "test-other": "md5:fb5a50374b501bb3bac4815ee91d3135",
    "train-clean-100": "md5:2a93770f6d5c6c964bc36631d331a522",
    "train-clean-360": "md5:c0e676e450a7ff2f54aeade5171606fa",
    "train-other-500": "md5:d1a0fd59409feb2c614ce4d30c387708",
}
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
