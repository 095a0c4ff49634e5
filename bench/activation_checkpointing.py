"""Activation checkpointing without FSDP (`activation_checkpointing=true`), on and off, for a Whisper-tiny training
step (4 + 4 layers, d_model 384, 30 s windows, 64 label tokens) on the CPU: peak resident memory, step time and the
largest gradient difference.

    python bench/activation_checkpointing.py                 # batch 8
    python bench/activation_checkpointing.py --batch-size 16

Each setting runs in a fresh process (peak RSS is per process): the model is built with the same seed, one
warm-up step, then `--steps` timed steps; the peak RSS above what the process held before the first step is the
step's memory. The gradients of the first step are written to a temporary file and compared between settings.
Prints a markdown table (paste into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from speechtrain.distributed import checkpoint_block_activations
from speechtrain.models.whisper.config import WhisperConfig
from speechtrain.models.whisper.modeling import WhisperForConditionalGeneration

LABEL_TOKENS = 64


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(checkpointing: bool, batch_size: int, steps: int, gradients_path: str) -> dict[str, float]:
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(WhisperConfig()).train()
    if checkpointing:
        checkpoint_block_activations(model)
    features = torch.randn(batch_size, 80, 3000)
    frame_mask = torch.ones(batch_size, 3000, dtype=torch.bool)
    tokens = torch.randint(0, 51865, (batch_size, LABEL_TOKENS + 1))
    inputs, labels = tokens[:, :-1], tokens[:, 1:]

    def step() -> None:
        model.zero_grad(set_to_none=True)
        logits = model(features, frame_mask, inputs, None)  # [batch, tokens, vocab]
        F.cross_entropy(logits.flatten(0, 1), labels.flatten()).backward()

    before = peak_rss_mib()
    step()
    torch.save({name: p.grad for name, p in model.named_parameters() if p.grad is not None}, gradients_path)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return {"seconds": (time.perf_counter() - start) / steps, "peak_mib": peak_rss_mib() - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    parser.add_argument("--gradients", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child == "on", args.batch_size, args.steps, args.gradients)))
        return

    results, folder = {}, Path(tempfile.mkdtemp())
    for setting in ("off", "on"):
        command = [sys.executable, __file__, "--child", setting, "--batch-size", str(args.batch_size),
                   "--steps", str(args.steps), "--gradients", str(folder / f"{setting}.pt")]
        results[setting] = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    off, on = (torch.load(folder / f"{setting}.pt") for setting in ("off", "on"))
    difference = max((off[name] - on[name]).abs().max().item() for name in off)
    print(f"\nWhisper-tiny training step (4 + 4 layers, d_model 384), batch {args.batch_size} x 30 s x {LABEL_TOKENS} "
          f"tokens, CPU fp32, {torch.get_num_threads()} threads, torch {torch.__version__}; mean of {args.steps} "
          f"steps after a warm-up, each setting in its own process; largest gradient difference {difference:.1e}\n")
    print("| activation checkpointing | peak memory of a step (MiB) | step (s) |")
    print("|---|---:|---:|")
    for setting in ("off", "on"):
        print(f"| {setting} | {results[setting]['peak_mib']:.0f} | {results[setting]['seconds']:.2f} |")
    ratio = results["on"]["peak_mib"] / results["off"]["peak_mib"]
    slower = results["on"]["seconds"] / results["off"]["seconds"]
    print(f"| on / off | {ratio:.2f} | {slower:.2f} |")


if __name__ == "__main__":
    main()
