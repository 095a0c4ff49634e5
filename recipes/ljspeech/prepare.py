"""LJSpeech 1.1 for `recipe=vits_ljspeech`.

    python recipes/ljspeech/prepare.py --root data

Downloads the archive from keithito.com (2.6 GB, resumable, checked against its sha256), unpacks it into
`<root>/LJSpeech-1.1` (`metadata.csv` + `wavs/`, read directly by the `ljspeech` corpus format) and checks
that every transcript has its wav file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from download import fetch_and_extract  # noqa: E402

from speechtrain.data.corpora import read_ljspeech  # noqa: E402

URL = "https://data.keithito.com/data/speech/LJSpeech-1.1.tar.bz2"
# The archive's sha256 (2,748,572,632 bytes); checked before it is unpacked.
CHECKSUM = "sha256:be1a30453f28eb8dd26af4101ae40cbf2c50413b1bb21936cbcdc6fae3de8aa5"


def prepare_ljspeech(root: Path, fetch: bool = True) -> Path:
    """Download (optionally) and unpack LJSpeech; returns its folder after checking it reads."""
    corpus = root / "LJSpeech-1.1"
    if fetch and not (corpus / "metadata.csv").is_file():
        fetch_and_extract(URL, root / "downloads" / "LJSpeech-1.1.tar.bz2", root, CHECKSUM)
    utterances = read_ljspeech(corpus)
    missing = [u.audio_path for u in utterances if not Path(u.audio_path).is_file()]
    print(f"{corpus}: {len(utterances)} utterances, {len(missing)} without audio"
          + (f" (e.g. {missing[0]})" if missing else ""))
    return corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("data"))
    parser.add_argument("--no-download", action="store_true", help="LJSpeech-1.1 is already unpacked under --root")
    args = parser.parse_args()
    prepare_ljspeech(args.root, fetch=not args.no_download)


if __name__ == "__main__":
    main()
