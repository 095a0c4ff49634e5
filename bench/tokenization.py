"""`speechtrain-tokenize` one utterance at a time against batched, and the memory its tokens take once loaded.

    python bench/tokenization.py                          # the bundled mini corpus (40 clips, 81 s), CPU
    python bench/tokenization.py --batch-sizes 1 4 8 16 --rounds 3 --device cuda

Speed: `tokenize_corpus` end to end (header check, audio loading, EnCodec 24 kHz at 6 kbps and HuBERT base layer 6,
k-means ids, shard writing) on `speechtrain/assets/mini`, with random-initialised full-size models (as
`EncodecCodec(bandwidth=6.0)` and `HubertSemanticTokenizer()` build them without checkpoints; the speed is the
same as with trained weights) and the bundled k-means of `mini_tokens`, so nothing is fitted. Rounds alternate
the batch sizes, the first is a warm-up, and the table gives the best; each row says whether its folder holds
the same bytes as batch size 1's (batching may flip a code where float rounding decides, see
`EncodecCodec.batch_embeddings`).

Then each model alone, one at a time and batched, in ms per utterance: which part gains.

Memory: the tensors a `TokenDataModule` over `speechtrain/assets/mini_tokens` holds once set up (the bytes of
their storages, each counted once: the utterances are views of one tensor per shard), as loaded now (int16) and
as they were (each utterance's ids as int64), per hour of audio and for LibriTTS's 585 hours. Exact and
deterministic, whatever else runs. Prints markdown tables (paste into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from common import machine_line, time_rounds

from speechtrain.data.audio import load_audio
from speechtrain.data.codecs import EncodecCodec
from speechtrain.data.semantic import HubertSemanticTokenizer, KMeans
from speechtrain.data.token_data import SoundStormCollator, TokenDataModule
from speechtrain.data.token_shards import TokenizedUtterance, read_token_shards, tokenize_corpus
from speechtrain.train import BUNDLED_DATA_DIR

CORPUS = {"format": "ljspeech", "path": str(BUNDLED_DATA_DIR / "mini")}
TOKENS = BUNDLED_DATA_DIR / "mini_tokens"
LIBRITTS_HOURS = 585


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def tokenize_seconds(batch_size: int, codec: EncodecCodec, semantic: HubertSemanticTokenizer, out: Path,
                     device: str) -> float:
    """Seconds `tokenize_corpus` takes on the mini corpus into a fresh `out`."""
    shutil.rmtree(out, ignore_errors=True)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    tokenize_corpus(CORPUS, out, codec, semantic, shard_size=20, kmeans_clusters=semantic.num_clusters,
                    max_duration=60.0, batch_size=batch_size)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def speed_rows(args: argparse.Namespace) -> None:
    codec = EncodecCodec(bandwidth=6.0).to(args.device)
    semantic = HubertSemanticTokenizer(layer=6, kmeans=KMeans.load(TOKENS / "kmeans.safetensors")).to(args.device)
    with tempfile.TemporaryDirectory() as scratch:
        outs = {size: Path(scratch) / f"batch-{size}" for size in args.batch_sizes}
        seconds: dict[int, list[float]] = {size: [] for size in args.batch_sizes}
        for round_index in range(args.rounds + 1):
            order = args.batch_sizes if round_index % 2 == 0 else list(reversed(args.batch_sizes))
            for size in order:
                elapsed = tokenize_seconds(size, codec, semantic, outs[size], args.device)
                if round_index:
                    seconds[size].append(elapsed)
        reference = folder_bytes(outs[args.batch_sizes[0]])
        same = {size: folder_bytes(out) == reference for size, out in outs.items()}
        tokens = read_token_shards(outs[args.batch_sizes[0]])
    audio_seconds = sum(u.duration for u in tokens)
    first = min(seconds[args.batch_sizes[0]])
    print(f"Tokenization of the mini corpus ({len(tokens)} utterances, {audio_seconds:.0f} s), "
          f"{machine_line(args.device)}:")
    print()
    print(f"| batch size | utterances/s | audio s/s | speed-up over {args.batch_sizes[0]} | "
          f"same bytes as batch size {args.batch_sizes[0]} |")
    print("|---:|---:|---:|---:|---|")
    for size in args.batch_sizes:
        best = min(seconds[size])
        print(f"| {size} | {len(tokens) / best:.2f} | {audio_seconds / best:.2f} | {first / best:.2f} | "
              f"{'yes' if same[size] else 'no'} |")


def part_rows(args: argparse.Namespace) -> None:
    """Seconds per utterance of each model alone, one at a time and batched (longest first), so the table shows
    which part gains: EnCodec batches its LSTM; HuBERT's convolutions batched are what `features_batch` does on an
    accelerator (on a CPU it runs one at a time)."""
    codec = EncodecCodec(bandwidth=6.0).to(args.device)
    semantic = HubertSemanticTokenizer(layer=6).to(args.device)
    waveforms = [load_audio(path, 22050) for path in sorted((BUNDLED_DATA_DIR / "mini" / "wavs").glob("*.wav"))]
    waveforms.sort(key=len, reverse=True)
    size = max(args.batch_sizes)
    batches = [waveforms[start : start + size] for start in range(0, len(waveforms), size)]
    steps = {
        "EnCodec, one at a time": lambda: [codec.encode(w, 22050) for w in waveforms],
        f"EnCodec, batches of {size}": lambda: [codec.encode_batch(b, 22050) for b in batches],
        "HuBERT features, one at a time": lambda: [semantic.features(w, 22050) for w in waveforms],
        f"HuBERT features, convolutions in batches of {size}":
            lambda: [semantic.features_batch(b, 22050, batch_convolutions=True) for b in batches],
    }
    seconds = time_rounds(steps, args.rounds, args.device)
    print()
    print(f"Each model alone on the mini corpus, the best of {args.rounds} timed round(s):")
    print()
    print("| model, batching | ms per utterance |")
    print("|---|---:|")
    for name, values in seconds.items():
        print(f"| {name} | {1000 * min(values) / len(waveforms):.1f} |")


def loaded_utterances() -> list[TokenizedUtterance]:
    """The utterances a `TokenDataModule` over `mini_tokens` holds after `setup`."""
    module = TokenDataModule(TOKENS, SoundStormCollator(), max_batch_seconds=5.0, val_fraction=0.0)
    module.setup("fit")
    return module.train_dataset.utterances


def storage_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the storages behind `tensors`, each counted once."""
    storages = {tensor.untyped_storage().data_ptr(): tensor.untyped_storage().nbytes() for tensor in tensors}
    return sum(storages.values())


def memory_rows() -> None:
    utterances = loaded_utterances()
    hours = sum(u.duration for u in utterances) / 3600
    held = {
        "int16 (now)": storage_bytes([t for u in utterances for t in (u.acoustic, u.semantic)]),
        "int64 (before)": storage_bytes([t.long() for u in utterances for t in (u.acoustic, u.semantic)]),
    }
    print()
    print(f"Token memory of a TokenDataModule over mini_tokens ({len(utterances)} utterances, {hours * 3600:.0f} s; "
          "EnCodec 8 levels at 75 Hz, HuBERT ids at 50 Hz):")
    print()
    print(f"| ids as | mini_tokens | per hour of audio | LibriTTS ({LIBRITTS_HOURS} h) |")
    print("|---|---:|---:|---:|")
    for name, size in held.items():
        print(f"| {name} | {size / 1e3:.1f} kB | {size / hours / 1e6:.2f} MB | "
              f"{size / hours * LIBRITTS_HOURS / 1e9:.2f} GB |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="the first is the baseline")
    parser.add_argument("--rounds", type=int, default=1, help="timed rounds, after one warm-up round")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-only", action="store_true", help="skip the (slow) speed table")
    args = parser.parse_args()
    if not args.memory_only:
        with torch.no_grad():
            speed_rows(args)
            part_rows(args)
    memory_rows()


if __name__ == "__main__":
    main()
