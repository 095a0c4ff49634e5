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
import dataclasses

import torch
import transformers
from common import add_common_arguments, best_rates, machine_line, torch_dtype, training_step_fn

from speechtrain.models.speech2text import Speech2TextConfig, Speech2TextForConditionalGeneration
from speechtrain.models.speech2text.features import Speech2TextFeatureExtractor

SIZES = {  # fairseq s2t_transformer_{s,m,l}: (d_model, ffn_dim, heads)
    "s": (256, 2048, 4),
    "m": (512, 2048, 8),
    "l": (1024, 4096, 16),
}


def make_configs(size: str, vocab_size: int) -> tuple[Speech2TextConfig, transformers.Speech2TextConfig]:
    d_model, ffn_dim, heads = SIZES[size]
    kwargs = dict(
        vocab_size=vocab_size, d_model=d_model, encoder_layers=12, decoder_layers=6, encoder_attention_heads=heads,
        decoder_attention_heads=heads, encoder_ffn_dim=ffn_dim, decoder_ffn_dim=ffn_dim, conv_channels=1024,
        input_feat_per_channel=80, max_source_positions=6000, max_target_positions=1024,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    )
    return Speech2TextConfig(**kwargs), transformers.Speech2TextConfig(**kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="s")
    parser.add_argument("--seconds", type=float, default=10.0, help="longest utterance; the others are shorter")
    add_common_arguments(parser, steps=3)
    parser.add_argument("--feature-batch", type=int, default=16, help="waveforms per feature batch")
    args = parser.parse_args()
    dtype = torch_dtype(args.dtype)
    torch.manual_seed(0)

    ours_config, hf_config = make_configs(args.size, vocab_size=10000)
    theirs = transformers.Speech2TextForConditionalGeneration(hf_config)
    models = {}
    for implementation in ("sdpa", "eager"):
        ours = Speech2TextForConditionalGeneration(dataclasses.replace(ours_config, attn_implementation=implementation))
        ours.load_state_dict(theirs.state_dict())
        models[f"speechtrain ({implementation})"] = ours.to(args.device).train()
    models["transformers (eager)"] = theirs.to(args.device).train()

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

    train_rate = best_rates({
        name: training_step_fn(model, logits_fn(model, name.startswith("transformers")), labels, dtype, args.device)
        for name, model in models.items()
    }, args.steps, args.rounds, args.device)

    waveforms = [torch.randn(int(16000 * args.seconds * (0.5 + 0.5 * i / args.feature_batch))) * 0.1
                 for i in range(args.feature_batch)]
    numpy_waves = [w.numpy() for w in waveforms]
    ours_fe, hf_fe = Speech2TextFeatureExtractor(), transformers.Speech2TextFeatureExtractor()
    feature_rate = best_rates({
        "speechtrain": lambda: ours_fe(waveforms),
        "transformers": lambda: hf_fe(numpy_waves, sampling_rate=16000, padding=True, return_tensors="pt"),
    }, 3, args.rounds, "cpu")
    audio = sum(len(w) for w in waveforms) / 16000

    parameters = sum(p.numel() for p in theirs.parameters()) / 1e6
    print(f"\nSpeech2Text s2t_transformer_{args.size} ({parameters:.1f} M parameters), batch {args.batch_size} x "
          f"{args.seconds / 2:g}-{args.seconds:g} s, {args.tokens} tokens, {args.dtype}, {machine_line(args.device)}\n")
    reference = train_rate["transformers (eager)"]
    print("| measure | " + " | ".join(train_rate) + " |")
    print("|---|" + "---|" * len(train_rate))
    print("| training steps/s | " + " | ".join(f"{rate:.3f}" for rate in train_rate.values()) + " |")
    print("| ratio to transformers | " + " | ".join(f"{rate / reference:.2f}" for rate in train_rate.values()) + " |")
    ours_rt, hf_rt = audio * feature_rate["speechtrain"], audio * feature_rate["transformers"]
    print(f"\n| filterbanks (CPU, batch {args.feature_batch}), s of audio per s | speechtrain | transformers | ratio |")
    print("|---|---|---|---|")
    print(f"| | {ours_rt:.0f} | {hf_rt:.0f} | {ours_rt / hf_rt:.2f} |")

if __name__ == "__main__":
    main()
