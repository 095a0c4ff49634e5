"""LibriTTS (openslr 60) for SoundStorm and Bark: manifests, then optionally codec tokens.

    python recipes/libritts/prepare.py --root data --subsets train-clean-100 dev-clean
    python recipes/libritts/prepare.py --root data --no-download --subsets dev-clean \\
        --tokens data/libritts_tokens --codec-checkpoint encodec_24khz-d7cc33bc.th \\
        --hubert-checkpoint hubert_fairseq_base_ls960.pth --device cuda

Downloads the subsets from openslr.org (resumable, each checked against its md5 sum), unpacks them into
`<root>/LibriTTS/<subset>` (`<speaker>/<chapter>/<utterance>.wav` + `<utterance>.normalized.txt`, read directly by the
`libritts` corpus format) and writes a NeMo manifest per subset with durations from the wav headers
(`<root>/LibriTTS/<subset>.jsonl`). With `--tokens DIR` each subset is then tokenized into
`DIR/<subset>` by `speechtrain-tokenize`; options this script does not know are passed on to it.
The first subset fits the k-means and the others reuse it, so their semantic ids agree: list the
training subset first.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from download import OpenSLRCorpus  # noqa: E402

from speechtrain.cli import tokenize  # noqa: E402
from speechtrain.data.corpora import read_libritts  # noqa: E402

# The md5 sums of openslr's SLR60 archives, in md5sum's format in the md5sum.txt beside this script;
# every archive is checked before it is unpacked.
LIBRITTS = OpenSLRCorpus(60, "LibriTTS", read_libritts, Path(__file__).with_name("md5sum.txt"))


def prepare_libritts(root: Path, subsets: list[str], fetch: bool = True) -> list[Path]:
    """Download (optionally), unpack and write one manifest per subset; returns the manifest paths."""
    return LIBRITTS.prepare(root, subsets, fetch)


def tokenize_subsets(manifests: list[Path], tokens: Path, tokenize_args: list[str]) -> list[Path]:
    """`speechtrain-tokenize` per manifest into `tokens/<subset>`; the first subset's k-means serves all."""
    folders = []
    for manifest in manifests:
        out = tokens / manifest.stem
        shared = [] if not folders else ["--kmeans", str(folders[0] / "kmeans.safetensors")]
        tokenize.main(["--corpus-format", "manifest", "--corpus-path", str(manifest), "--out", str(out),
                       *shared, *tokenize_args])
        folders.append(out)
    return folders


def main() -> None:
    parser = LIBRITTS.argument_parser(__doc__.splitlines()[0], "--subsets", default=["train-clean-100", "dev-clean"])
    parser.add_argument("--tokens", type=Path, default=None, help="also tokenize each subset into TOKENS/<subset>")
    args, tokenize_args = parser.parse_known_args()
    if tokenize_args and args.tokens is None:
        parser.error(f"unrecognized arguments: {' '.join(tokenize_args)} (speechtrain-tokenize options need --tokens)")
    manifests = prepare_libritts(args.root, args.subsets, fetch=not args.no_download)
    if args.tokens is not None:
        tokenize_subsets(manifests, args.tokens, tokenize_args)


if __name__ == "__main__":
    main()
