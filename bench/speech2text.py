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
import platform
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import transformers

from speechtrain.data.features import Speech2TextFeatureExtractor
from speechtrain.models.speech2text import Speech2TextConfig, Speech2TextForConditionalGeneration

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


def time_steps(step: Callable[[], None], steps: int, device: str) -> float:
    """Seconds per step over `steps` steps, after one untimed warm-up step."""
    step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def training_step_fn(model: torch.nn.Module, batch: dict, hf: bool, dtype: torch.dtype, device: str):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
            if hf:
                logits = model(input_features=batch["features"], attention_mask=batch["frame_mask"].long(),
                               decoder_input_ids=batch["decoder_input_ids"]).logits
            else:
                logits = model(batch["features"], batch["frame_mask"], batch["decoder_input_ids"], None)
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="s")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="longest utterance; the others are shorter")
    parser.add_argument("--tokens", type=int, default=64, help="decoder tokens per example")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--feature-batch", type=int, default=16, help="waveforms per feature batch")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(0)

    ours_config, hf_config = make_configs(args.size, vocab_size=10000)
    theirs = transformers.Speech2TextForConditionalGeneration(hf_config)
    models = {}
    for implementation in ("sdpa", "eager"):
        ours = Speech2TextForConditionalGeneration(ours_config, attn_implementation=implementation)
        ours.load_state_dict(theirs.state_dict())
        models[f"speechtrain ({implementation})"] = ours.to(args.device).train()
    models["transformers (eager)"] = theirs.to(args.device).train()

    frames = int(args.seconds * 100) - 2  # 10 ms hop, 25 ms window
    lengths = torch.linspace(frames // 2, frames, args.batch_size).long()  # a padded batch, as training sees
    frame_mask = (torch.arange(frames)[None, :] < lengths[:, None]).to(args.device)
    batch = {
        "features": torch.randn(args.batch_size, frames, 80, device=args.device) * frame_mask[..., None],
        "frame_mask": frame_mask,
        "decoder_input_ids": torch.randint(4, 10000, (args.batch_size, args.tokens), device=args.device),
        "labels": torch.randint(4, 10000, (args.batch_size, args.tokens), device=args.device),
    }
    steps = {name: training_step_fn(model, batch, name.startswith("transformers"), dtype, args.device)
             for name, model in models.items()}
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            seconds[name].append(time_steps(step, args.steps, args.device))
    train_rate = {name: 1.0 / min(values) for name, values in seconds.items()}

    waveforms = [torch.randn(int(16000 * args.seconds * (0.5 + 0.5 * i / args.feature_batch))) * 0.1
                 for i in range(args.feature_batch)]
    numpy_waves = [w.numpy() for w in waveforms]
    ours_fe, hf_fe = Speech2TextFeatureExtractor(), transformers.Speech2TextFeatureExtractor()
    feature_seconds = {
        "speechtrain": min(time_steps(lambda: ours_fe(waveforms), 3, "cpu") for _ in range(args.rounds)),
        "transformers": min(
            time_steps(lambda: hf_fe(numpy_waves, sampling_rate=16000, padding=True, return_tensors="pt"), 3, "cpu")
            for _ in range(args.rounds)
        ),
    }
    audio = sum(len(w) for w in waveforms) / 16000

    parameters = sum(p.numel() for p in theirs.parameters()) / 1e6
    print(f"\nSpeech2Text s2t_transformer_{args.size} ({parameters:.1f} M parameters), batch {args.batch_size} x "
          f"{args.seconds / 2:g}-{args.seconds:g} s, {args.tokens} tokens, {args.dtype}, {args.device} "
          f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"torch {torch.__version__}, transformers {transformers.__version__}\n")
    reference = train_rate["transformers (eager)"]
    print("| measure | " + " | ".join(train_rate) + " |")
    print("|---|" + "---|" * len(train_rate))
    print("| training steps/s | " + " | ".join(f"{rate:.3f}" for rate in train_rate.values()) + " |")
    print("| ratio to transformers | " + " | ".join(f"{rate / reference:.2f}" for rate in train_rate.values()) + " |")
    ours_rt, hf_rt = audio / feature_seconds["speechtrain"], audio / feature_seconds["transformers"]
    print(f"\n| filterbanks (CPU, batch {args.feature_batch}), s of audio per s | speechtrain | transformers | ratio |")
    print("|---|---|---|---|")
    print(f"| | {ours_rt:.0f} | {hf_rt:.0f} | {ours_rt / hf_rt:.2f} |")


if __name__ == "__main__":
    main()
