"""LJSpeech 1.1 for `recipe=vits_ljspeech`.

    python recipes/ljspeech/prepare.py --root data

Downloads the archive from keithito.com (2.6 GB, resumable), unpacks it into `<root>/LJSpeech-1.1`
(`metadata.csv` + `wavs/`, read directly by the `ljspeech` corpus format) and checks that every
transcript has its wav file.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from download import download  # noqa: E402

from speechtrain.data.corpora import read_ljspeech  # noqa: E402

URL = "https://data.keithito.com/data/speech/LJSpeech-1.1.tar.bz2"


def prepare_ljspeech(root: Path, fetch: bool = True) -> Path:
    """Download (optionally) and unpack LJSpeech; returns its folder after checking it reads."""
    corpus = root / "LJSpeech-1.1"
    if fetch and not (corpus / "metadata.csv").is_file():
        archive = download(URL, root / "downloads" / "LJSpeech-1.1.tar.bz2")
        with tarfile.open(archive) as tar:
            for member in tqdm(tar.getmembers(), desc="unpacking LJSpeech", unit="file"):
                tar.extract(member, root, filter="data")
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
