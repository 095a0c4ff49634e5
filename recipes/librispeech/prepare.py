"""LibriSpeech for `recipe=whisper_librispeech` (and later s2t_librispeech).

    python recipes/librispeech/prepare.py --root data --parts train-clean-100 dev-clean test-clean
    python recipes/librispeech/prepare.py --root data --no-download   # already unpacked by hand

Downloads the parts from openslr.org (resumable, each checked against openslr's md5 sum), unpacks them
into `<root>/LibriSpeech/<part>`, and writes a NeMo-style manifest per part (`<root>/LibriSpeech/<part>.jsonl`,
with durations read from the flac headers) so that training starts without scanning the folders again:
`data.train.format=manifest data.train.path=data/LibriSpeech/train-clean-100.jsonl`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from download import OpenSLRCorpus  # noqa: E402

from speechtrain.data.corpora import read_librispeech  # noqa: E402

# openslr's published md5 sums (https://www.openslr.org/resources/12/md5sum.txt, kept beside this script);
# every archive is checked before it is unpacked.
LIBRISPEECH = OpenSLRCorpus(12, "LibriSpeech", read_librispeech, Path(__file__).with_name("md5sum.txt"))


def prepare_librispeech(root: Path, parts: list[str], fetch: bool = True) -> list[Path]:
    """Download (optionally), unpack and write one manifest per part; returns the manifest paths."""
    return LIBRISPEECH.prepare(root, parts, fetch)


def main() -> None:
    parser = LIBRISPEECH.argument_parser(__doc__.splitlines()[0], "--parts",
                                         default=["train-clean-100", "dev-clean", "test-clean"])
    args = parser.parse_args()
    prepare_librispeech(args.root, args.parts, fetch=not args.no_download)


if __name__ == "__main__":
    main()
