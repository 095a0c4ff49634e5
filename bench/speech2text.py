"""Speech2Text side by side with transformers, in one process: training steps per second on the same padded
batch and config, and filterbank extraction speed against transformers' Speech2TextFeatureExtractor.

    python bench/speech2text.py                     # fairseq s2t_transformer_s dimensions, CPU
    python bench/speech2text.py --device cuda --dtype bf16 --batch-size 32 --size m

All models start from the same weights and use AdamW; runs alternate so that none gets a warmer machine.
transformers' Speech2Text only implements eager attention, so ours is timed with both eager and SDPA.
Prints a markdown table (paste into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse

import torch
import transformers
from common import add_common_arguments, feature_rates, machine_line, side_by_side, training_rates

from speechtrain.models.speech2text import model_from_hf_config
from speechtrain.models.speech2text.features import Speech2TextFeatureExtractor

SIZES = {  # fairseq s2t_transformer_{s,m,l}: (d_model, ffn_dim, heads)
    "s": (256, 2048, 4),
    "m": (512, 2048, 8),
    "l": (1024, 4096, 16),
}


def hf_config(d_model: int, ffn_dim: int, heads: int, vocab_size: int) -> transformers.Speech2TextConfig:
    return transformers.Speech2TextConfig(
        vocab_size=vocab_size, d_model=d_model, encoder_layers=12, decoder_layers=6, encoder_attention_heads=heads,
        decoder_attention_heads=heads, encoder_ffn_dim=ffn_dim, decoder_ffn_dim=ffn_dim, conv_channels=1024,
        input_feat_per_channel=80, max_source_positions=6000, max_target_positions=1024,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="longest utterance; the others are shorter")
    add_common_arguments(parser, steps=3, sizes=SIZES, default_size="s")
    parser.add_argument("--feature-batch", type=int, default=16, help="waveforms per feature batch")
    args = parser.parse_args()
    torch.manual_seed(0)

    theirs = transformers.Speech2TextForConditionalGeneration(hf_config(*SIZES[args.size], vocab_size=10000))
    models = side_by_side(theirs, model_from_hf_config, ["sdpa", "eager"], args.device)

    frames = int(args.seconds * 100) - 2  # 10 ms hop, 25 ms window
    lengths = torch.linspace(frames // 2, frames, args.batch_size).long()  # a padded batch, as training sees
    frame_mask = (torch.arange(frames)[None, :] < lengths[:, None]).to(args.device)
    features = torch.randn(args.batch_size, frames, 80, device=args.device) * frame_mask[..., None]
    decoder_input_ids = torch.randint(4, 10000, (args.batch_size, args.tokens), device=args.device)
    labels = torch.randint(4, 10000, (args.batch_size, args.tokens), device=args.device)

    def logits_fn(model: torch.nn.Module, hf: bool):
        if hf:
            return lambda: model(input_features=features, attention_mask=frame_mask.long(),
                                 decoder_input_ids=decoder_input_ids).logits
        return lambda: model(features, frame_mask, decoder_input_ids, None)

    train_rate = training_rates({
        name: (model, logits_fn(model, name.startswith("transformers"))) for name, model in models.items()
    }, labels, args)

    waveforms = [torch.randn(int(16000 * args.seconds * (0.5 + 0.5 * i / args.feature_batch))) * 0.1
                 for i in range(args.feature_batch)]
    ours_rt, hf_rt = feature_rates(Speech2TextFeatureExtractor(), transformers.Speech2TextFeatureExtractor(),
                                   waveforms, args.rounds, padding=True)

    parameters = sum(p.numel() for p in theirs.parameters()) / 1e6
    print(f"\nSpeech2Text s2t_transformer_{args.size} ({parameters:.1f} M parameters), batch {args.batch_size} x "
          f"{args.seconds / 2:g}-{args.seconds:g} s, {args.tokens} tokens, {args.dtype}, {machine_line(args.device)}\n")
    reference = train_rate["transformers (eager)"]
    print("| measure | " + " | ".join(train_rate) + " |")
    print("|---|" + "---|" * len(train_rate))
    print("| training steps/s | " + " | ".join(f"{rate:.3f}" for rate in train_rate.values()) + " |")
    print("| ratio to transformers | " + " | ".join(f"{rate / reference:.2f}" for rate in train_rate.values()) + " |")
    print(f"\n| filterbanks (CPU, batch {args.feature_batch}), s of audio per s | speechtrain | transformers | ratio |")
    print("|---|---|---|---|")
    print(f"| | {ours_rt:.0f} | {hf_rt:.0f} | {ours_rt / hf_rt:.2f} |")

if __name__ == "__main__":
    main()
