"""Whisper side by side with transformers, in one process: training steps per second on the same batch
and config, and log-mel feature extraction speed against WhisperFeatureExtractor.

    python bench/whisper.py                     # whisper-tiny dimensions, CPU
    python bench/whisper.py --device cuda --dtype bf16 --batch-size 16 --size base

Both models start from the same weights, use SDPA attention and AdamW, and alternate runs so that
neither gets a warmer machine. Prints a markdown table (paste into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse

import torch
import transformers
from common import add_common_arguments, feature_rates, machine_line, side_by_side, training_rates

from speechtrain.models.whisper import model_from_hf_config
from speechtrain.models.whisper.features import WhisperFeatureExtractor

SIZES = {  # openai/whisper dimensions: (d_model, layers, heads)
    "tiny": (384, 4, 6),
    "base": (512, 6, 8),
    "small": (768, 12, 12),
}


def hf_config(d_model: int, layers: int, heads: int, vocab_size: int) -> transformers.WhisperConfig:
    return transformers.WhisperConfig(
        vocab_size=vocab_size, num_mel_bins=80, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=4 * d_model,
        decoder_ffn_dim=4 * d_model, max_source_positions=1500, max_target_positions=448,
        pad_token_id=vocab_size - 1, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 2,
        decoder_start_token_id=vocab_size - 3, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, steps=5, sizes=SIZES, default_size="tiny")
    parser.add_argument("--feature-batch", type=int, default=16, help="30 s waveforms per feature batch")
    args = parser.parse_args()
    torch.manual_seed(0)

    theirs = transformers.WhisperForConditionalGeneration(hf_config(*SIZES[args.size], vocab_size=51865))
    theirs.config._attn_implementation = "sdpa"
    models = side_by_side(theirs, model_from_hf_config, ["sdpa"], args.device)
    ours = models["speechtrain (sdpa)"]

    features = torch.randn(args.batch_size, 80, 3000, device=args.device)
    decoder_input_ids = torch.randint(0, 51800, (args.batch_size, args.tokens), device=args.device)
    labels = torch.randint(0, 51800, (args.batch_size, args.tokens), device=args.device)
    train_rate = training_rates({
        "speechtrain": (ours, lambda: ours(features, None, decoder_input_ids, None)),
        "transformers": (theirs, lambda: theirs(input_features=features, decoder_input_ids=decoder_input_ids).logits),
    }, labels, args)

    waveforms = [torch.randn(16000 * 30) * 0.1 for _ in range(args.feature_batch)]
    ours_rt, hf_rt = feature_rates(WhisperFeatureExtractor(feature_size=80),
                                   transformers.WhisperFeatureExtractor(feature_size=80), waveforms, args.rounds)

    print(f"\nWhisper-{args.size}, batch {args.batch_size} x 30 s, {args.tokens} tokens, {args.dtype}, "
          f"{machine_line(args.device)}\n")
    print("| measure | speechtrain | transformers | ratio (ours / theirs) |")
    print("|---|---|---|---|")
    print(f"| training steps/s | {train_rate['speechtrain']:.3f} | {train_rate['transformers']:.3f} | "
          f"{train_rate['speechtrain'] / train_rate['transformers']:.2f} |")
    print(f"| log-mel features, s of audio per s (CPU, batch {args.feature_batch}) | {ours_rt:.0f} | {hf_rt:.0f} | "
          f"{ours_rt / hf_rt:.2f} |")

if __name__ == "__main__":
    main()
