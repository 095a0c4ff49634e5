"""`compile=true` against eager: training steps per second of Whisper-tiny and Bark-small (coarse) with their blocks
compiled by `speechtrain.distributed.compile_blocks` (inductor), in one process, from the same weights and batch.

    python bench/compile.py                          # CPU, Whisper-tiny batch 1 x 30 s, Bark-small batch 4
    python bench/compile.py --device cuda --dtype bf16 --batch-size 8

The compiled copy is warmed up (compiled) before timing and the compile time is printed; the rounds alternate
between the two so that neither gets a warmer machine. Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import torch
import transformers
from bark import HF, SIZES, VOCABS, utterances
from common import machine_line, torch_dtype, training_rates
from whisper import SIZES as WHISPER_SIZES
from whisper import hf_config

from speechtrain.data.bark_data import BarkCoarseCollator
from speechtrain.distributed import compile_blocks
from speechtrain.models.bark import model_from_hf_config as bark_model
from speechtrain.models.whisper import model_from_hf_config as whisper_model

Case = tuple[torch.nn.Module, Callable[[torch.nn.Module], torch.Tensor], torch.Tensor]


def whisper_case(args: argparse.Namespace) -> Case:
    """Whisper-tiny's model, a forward over one batch, and its labels."""
    theirs = transformers.WhisperForConditionalGeneration(hf_config(*WHISPER_SIZES["tiny"], vocab_size=51865))
    model = whisper_model({**theirs.config.to_dict(), "attn_implementation": "sdpa"})
    model.load_state_dict(theirs.state_dict())
    model.to(args.device).train()
    features = torch.randn(args.batch_size, 80, 3000, device=args.device)
    decoder_input_ids = torch.randint(0, 51800, (args.batch_size, args.tokens), device=args.device)
    labels = torch.randint(0, 51800, (args.batch_size, args.tokens), device=args.device)
    return model, lambda m: m(features, None, decoder_input_ids, None), labels


def bark_case(args: argparse.Namespace) -> Case:
    """Bark-small's coarse model, a forward over a batch of late generation windows, and its labels."""
    config_class, _ = HF["coarse_acoustics"]
    hf_config_dict = config_class(**VOCABS["coarse_acoustics"], **SIZES["small"], block_size=1024).to_dict()
    model = bark_model({**hf_config_dict, "attn_implementation": "sdpa"}).to(args.device).train()
    collate = BarkCoarseCollator(windows_per_utterance=1, seed=0)
    batch = collate(utterances(args.bark_batch_size, 14.0))
    input_ids = batch["input_ids"].to(args.device)
    return model, lambda m: m(input_ids)[0], batch["labels"].to(args.device)


def measure(case: Case, args: argparse.Namespace, dtype: torch.dtype) -> tuple[float, float, float]:
    """(eager steps/s, compiled steps/s, seconds of the first compiled step) of one case."""
    eager, forward, labels = case
    compiled = copy.deepcopy(eager)
    compile_blocks(compiled, {} if args.mode is None else {"mode": args.mode})
    start = time.perf_counter()
    with torch.autocast(device_type=args.device, dtype=dtype, enabled=dtype != torch.float32):
        forward(compiled).float().sum().backward()  # compiles the forward and backward graphs
    compiled.zero_grad(set_to_none=True)
    compile_seconds = time.perf_counter() - start
    rates = training_rates({"eager": (eager, lambda: forward(eager)),
                            "compiled": (compiled, lambda: forward(compiled))}, labels, args)
    return rates["eager"], rates["compiled"], compile_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=1, help="Whisper: 30 s examples per batch")
    parser.add_argument("--tokens", type=int, default=64, help="Whisper: decoder tokens per example")
    parser.add_argument("--bark-batch-size", type=int, default=4, help="Bark: coarse windows per batch")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--mode", default=None, help="torch.compile mode (default, reduce-overhead, max-autotune)")
    args = parser.parse_args()
    torch.manual_seed(0)
    dtype = torch_dtype(args.dtype)

    rows = [(name, *measure(build(args), args, dtype))
            for name, build in (("Whisper-tiny", whisper_case), ("Bark-small coarse", bark_case))]

    print(f"\ncompile on vs off, training steps, {args.dtype}, {machine_line(args.device)}\n")
    print("| model | eager steps/s | compiled steps/s | ratio (compiled / eager) | first compile, s |")
    print("|---|---:|---:|---:|---:|")
    for name, eager_rate, compiled_rate, compile_seconds in rows:
        print(f"| {name} | {eager_rate:.3f} | {compiled_rate:.3f} | {compiled_rate / eager_rate:.2f} | "
              f"{compile_seconds:.0f} |")


if __name__ == "__main__":
    main()
