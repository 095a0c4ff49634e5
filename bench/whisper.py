"""Whisper side by side with transformers, in one process: training steps per second on the same batch
and config, and log-mel feature extraction speed against WhisperFeatureExtractor.

    python bench/whisper.py                     # whisper-tiny dimensions, CPU
    python bench/whisper.py --device cuda --dtype bf16 --batch-size 16 --size base

Both models start from the same weights, use SDPA attention and AdamW, and alternate runs so that
neither gets a warmer machine. Prints a markdown table (paste into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import transformers

from speechtrain.data.features import WhisperFeatureExtractor
from speechtrain.models.whisper import WhisperConfig, WhisperForConditionalGeneration

SIZES = {  # openai/whisper dimensions: (d_model, layers, heads)
    "tiny": (384, 4, 6),
    "base": (512, 6, 8),
    "small": (768, 12, 12),
}


def make_configs(size: str, vocab_size: int) -> tuple[WhisperConfig, transformers.WhisperConfig]:
    d_model, layers, heads = SIZES[size]
    kwargs = dict(
        vocab_size=vocab_size, num_mel_bins=80, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=4 * d_model,
        decoder_ffn_dim=4 * d_model, max_source_positions=1500, max_target_positions=448,
        pad_token_id=vocab_size - 1, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 2,
        decoder_start_token_id=vocab_size - 3, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    )
    return WhisperConfig(**kwargs), transformers.WhisperConfig(**kwargs)


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
                logits = model(input_features=batch["features"], decoder_input_ids=batch["decoder_input_ids"]).logits
            else:
                logits = model(batch["features"], None, batch["decoder_input_ids"], None)
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64, help="decoder tokens per example")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--feature-batch", type=int, default=16, help="30 s waveforms per feature batch")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(0)

    ours_config, hf_config = make_configs(args.size, vocab_size=51865)
    theirs = transformers.WhisperForConditionalGeneration(hf_config)
    theirs.config._attn_implementation = "sdpa"
    ours = WhisperForConditionalGeneration(ours_config, attn_implementation="sdpa")
    ours.load_state_dict(theirs.state_dict(), strict=False)
    ours.to(args.device).train()
    theirs.to(args.device).train()

    batch = {
        "features": torch.randn(args.batch_size, 80, 3000, device=args.device),
        "decoder_input_ids": torch.randint(0, 51800, (args.batch_size, args.tokens), device=args.device),
        "labels": torch.randint(0, 51800, (args.batch_size, args.tokens), device=args.device),
    }
    steps = {
        "speechtrain": training_step_fn(ours, batch, False, dtype, args.device),
        "transformers": training_step_fn(theirs, batch, True, dtype, args.device),
    }
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            seconds[name].append(time_steps(step, args.steps, args.device))
    train_rate = {name: 1.0 / min(values) for name, values in seconds.items()}

    waveforms = [torch.randn(16000 * 30) * 0.1 for _ in range(args.feature_batch)]
    ours_fe = WhisperFeatureExtractor(feature_size=80)
    hf_fe = transformers.WhisperFeatureExtractor(feature_size=80)
    numpy_waves = [w.numpy() for w in waveforms]
    feature_seconds = {
        "speechtrain": min(time_steps(lambda: ours_fe(waveforms), 3, "cpu") for _ in range(args.rounds)),
        "transformers": min(
            time_steps(lambda: hf_fe(numpy_waves, sampling_rate=16000, return_tensors="pt"), 3, "cpu")
            for _ in range(args.rounds)
        ),
    }
    audio = 30.0 * args.feature_batch

    print(f"\nWhisper-{args.size}, batch {args.batch_size} x 30 s, {args.tokens} tokens, {args.dtype}, "
          f"{args.device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"torch {torch.__version__}, transformers {transformers.__version__}\n")
    print("| measure | speechtrain | transformers | ratio (ours / theirs) |")
    print("|---|---|---|---|")
    print(f"| training steps/s | {train_rate['speechtrain']:.3f} | {train_rate['transformers']:.3f} | "
          f"{train_rate['speechtrain'] / train_rate['transformers']:.2f} |")
    ours_rt, hf_rt = audio / feature_seconds["speechtrain"], audio / feature_seconds["transformers"]
    print(f"| log-mel features, s of audio per s (CPU, batch {args.feature_batch}) | {ours_rt:.0f} | {hf_rt:.0f} | "
          f"{ours_rt / hf_rt:.2f} |")


if __name__ == "__main__":
    main()
