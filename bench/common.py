"""Timing pieces the side-by-side benchmarks share: timing a step, alternating rounds, the CLI options and the
header line of the printed markdown tables. The scripts import it as `common` (run them as `python bench/x.py`)."""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import transformers


def time_rounds(steps: dict[str, Callable[[], None]], rounds: int, device: str) -> dict[str, list[float]]:
    """Seconds of each timed step; rounds alternate which runs first, the first round is a warm-up."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(rounds + 1):
        order = list(steps) if round_index % 2 == 0 else list(reversed(steps))
        for name in order:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            steps[name]()
            if device == "cuda":
                torch.cuda.synchronize()
            if round_index:
                times[name].append(time.perf_counter() - start)
    return times


def time_steps(step: Callable[[], object], steps: int, device: str) -> float:
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


def best_rates(steps: dict[str, Callable[[], object]], repeats: int, rounds: int, device: str) -> dict[str, float]:
    """Steps per second of each named step, the best of `rounds` rounds that alternate between them so that none
    gets a warmer machine."""
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            seconds[name].append(time_steps(step, repeats, device))
    return {name: 1.0 / min(values) for name, values in seconds.items()}


def training_step_fn(
    model: torch.nn.Module, logits_fn: Callable[[], torch.Tensor], labels: torch.Tensor, dtype: torch.dtype,
    device: str,
) -> Callable[[], None]:
    """One AdamW step on cross-entropy of `logits_fn()` `[B, T, vocab]` against `labels` `[B, T]`, under
    autocast when `dtype` is not float32."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
            logits = logits_fn()
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def add_common_arguments(parser: argparse.ArgumentParser, steps: int) -> None:
    """The options every model benchmark takes (the model size and input length are each script's own)."""
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64, help="decoder tokens per example")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")


def torch_dtype(name: str) -> torch.dtype:
    return torch.bfloat16 if name == "bf16" else torch.float32


def machine_line(device: str) -> str:
    """Where the numbers come from, for the line above a table."""
    return (f"{device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
            f"torch {torch.__version__}, transformers {transformers.__version__}")
