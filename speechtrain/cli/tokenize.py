"""`speechtrain-tokenize`: turn a corpus into EnCodec + HuBERT semantic token shards for SoundStorm and Bark.

    speechtrain-tokenize --corpus-format ljspeech --corpus-path data/mini --out tokens/mini \\
        --codec-checkpoint encodec_24khz-d7cc33bc.th --hubert-checkpoint hubert_fairseq_base_ls960.pth

The semantic ids are k-means clusters of HuBERT features by default (fitted here), or, with `--semantic NAME
--quantizer-checkpoint PATH`, a family's trained quantizer (`bark-quantizer`: the ids a pretrained Bark reads;
HuBERT base layer 9 unless --hubert-layer says otherwise). Resumable: run the same command again after an
interruption. A validation corpus must share the training corpus's k-means: pass
`--kmeans tokens/train/kmeans.safetensors`.
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from speechtrain.data.codecs import EncodecCodec
from speechtrain.data.corpora import FORMATS, CorpusSpec
from speechtrain.data.semantic import HubertSemanticTokenizer, KMeans, SemanticQuantizer
from speechtrain.data.token_shards import read_token_info, tokenize_corpus
from speechtrain.models.registry import resolve, semantic_quantizers

KMEANS_CHOICE = "kmeans"
DEFAULT_KMEANS_LAYER = 6

RANDOM_WEIGHTS_WARNING = (
    "\n*** speechtrain-tokenize: no {what} checkpoint given: using RANDOM {what} weights. The tokens mean nothing; "
    "this is fine for tests and smoke runs only. Pass {option} for real training. ***\n"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="speechtrain-tokenize", description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-format", required=True, choices=FORMATS)
    parser.add_argument("--corpus-path", required=True, help="corpus folder, manifest or dataset folder")
    parser.add_argument("--split", default=None, help="split of an hf dataset")
    parser.add_argument("--limit", type=int, default=None, help="tokenize only the first N utterances")
    parser.add_argument("--out", required=True, help="output folder (created; a rerun resumes it)")
    parser.add_argument("--codec-checkpoint", default=None, help="the official encodec_24khz-d7cc33bc.th")
    parser.add_argument("--bandwidth", type=float, default=6.0, help="EnCodec kbps (6 = 8 codebooks, as Bark)")
    parser.add_argument("--hubert-checkpoint", default=None,
                        help="torchaudio-format HuBERT state dict, e.g. hubert_fairseq_base_ls960.pth")
    parser.add_argument("--hubert-layer", type=int, default=None,
                        help=f"transformer layer whose features become ids (default {DEFAULT_KMEANS_LAYER} for the "
                             "k-means, the quantizer's own layer for a quantizer)")
    parser.add_argument("--semantic", default=KMEANS_CHOICE, choices=[KMEANS_CHOICE, *sorted(semantic_quantizers())],
                        help="how features become semantic ids: a k-means fitted here, or a trained quantizer "
                             "(bark-quantizer: Bark-compatible ids, for fine-tuning a pretrained Bark)")
    parser.add_argument("--quantizer-checkpoint", default=None,
                        help="the quantizer's weights (bark-quantizer: e.g. quantifier_hubert_base_ls960_14.pth)")
    parser.add_argument("--kmeans", default=None, help="reuse this kmeans.safetensors (e.g. the train folder's)")
    parser.add_argument("--clusters", type=int, default=500, help="k-means clusters (semantic vocabulary)")
    parser.add_argument("--kmeans-fraction", type=float, default=0.1,
                        help="fraction of the utterances sampled to fit the k-means (fairseq's HuBERT recipe: 10 %%)")
    parser.add_argument("--kmeans-utterances", type=int, default=None,
                        help="sample exactly this many utterances instead (e.g. to bound memory on a large corpus)")
    parser.add_argument("--kmeans-iterations", type=int, default=100, help="Lloyd iterations per restart, at most")
    parser.add_argument("--kmeans-restarts", type=int, default=10, help="k-means++ restarts; the best is kept")
    parser.add_argument("--shard-size", type=int, default=1000, help="utterances per shard")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="utterances of similar length encoded at a time (1: one by one; other sizes give the "
                             "same ids up to float rounding)")
    parser.add_argument("--max-duration", type=float, default=60.0, help="skip longer utterances (seconds)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad audio file instead of skipping")
    return parser


def _semantic_quantizer(choice: str, checkpoint: str | None, kmeans: str | None) -> SemanticQuantizer | None:
    """The trained quantizer `--semantic` names (loaded from `--quantizer-checkpoint`), or None for the k-means."""
    if choice == KMEANS_CHOICE:
        if checkpoint is not None:
            raise ValueError("--quantizer-checkpoint is for a trained quantizer: add --semantic NAME "
                             f"(one of {', '.join(sorted(semantic_quantizers()))})")
        return None
    if checkpoint is None:
        raise ValueError(f"--semantic {choice} needs its weights: --quantizer-checkpoint PATH")
    if kmeans is not None:
        raise ValueError(f"--kmeans is for k-means ids; --semantic {choice} makes its ids with the quantizer")
    return resolve(semantic_quantizers()[choice])(checkpoint)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.codec_checkpoint is None:
        print(RANDOM_WEIGHTS_WARNING.format(what="EnCodec", option="--codec-checkpoint"), file=sys.stderr)
    if args.hubert_checkpoint is None:
        print(RANDOM_WEIGHTS_WARNING.format(what="HuBERT", option="--hubert-checkpoint"), file=sys.stderr)
    spec = CorpusSpec(args.corpus_format, args.corpus_path, split=args.split, limit=args.limit)
    try:
        quantizer = _semantic_quantizer(args.semantic, args.quantizer_checkpoint, args.kmeans)
        layer = args.hubert_layer or (DEFAULT_KMEANS_LAYER if quantizer is None else quantizer.hubert_layer)
        codec = EncodecCodec(args.bandwidth, args.codec_checkpoint).to(args.device)
        kmeans = None if args.kmeans is None else KMeans.load(args.kmeans)
        semantic = HubertSemanticTokenizer(args.hubert_checkpoint, layer, kmeans, quantizer=quantizer).to(args.device)
        out = tokenize_corpus(
            spec, args.out, codec, semantic, shard_size=args.shard_size, kmeans_clusters=args.clusters,
            kmeans_fraction=args.kmeans_fraction, kmeans_utterances=args.kmeans_utterances,
            kmeans_iterations=args.kmeans_iterations, kmeans_restarts=args.kmeans_restarts, seed=args.seed,
            strict=args.strict, max_duration=args.max_duration, batch_size=args.batch_size,
        )
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"speechtrain-tokenize: error: {err}")
    info = read_token_info(out)
    kept = sum(shard["utterances"] for shard in info["shards"])
    print(f"{out}: {kept} utterances in {len(info['shards'])} shards, {len(info['skipped'])} skipped")


if __name__ == "__main__":
    main()
