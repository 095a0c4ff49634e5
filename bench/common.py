"""Pieces the side-by-side benchmarks share: timing a step, alternating rounds, our models built from a transformers
model's config and weights, feature-extraction speed, the CLI options and the header line of the printed markdown
tables. The scripts import it as `common` (run them as `python bench/x.py`)."""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

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


def training_rates(steps: Mapping[str, tuple[torch.nn.Module, Callable[[], torch.Tensor]]], labels: torch.Tensor,
                   args: argparse.Namespace) -> dict[str, float]:
    """Training steps per second of each named `(model, logits_fn)`: `training_step_fn` steps under `args.dtype`,
    the best of `args.rounds` alternating rounds of `args.steps` steps on `args.device` (the options of
    `add_common_arguments`)."""
    dtype = torch_dtype(args.dtype)
    return best_rates({name: training_step_fn(model, logits_fn, labels, dtype, args.device)
                       for name, (model, logits_fn) in steps.items()}, args.steps, args.rounds, args.device)


def side_by_side(
    theirs: torch.nn.Module, model_from_hf_config: Callable[[Mapping[str, Any]], torch.nn.Module],
    implementations: Iterable[str], device: str,
) -> dict[str, torch.nn.Module]:
    """Our model of a transformers model's config once per attention implementation, each holding its weights (every
    key), then the transformers model itself: `{"speechtrain (sdpa)": ..., "transformers (eager)": theirs}`, all on
    `device` in train mode."""
    models = {}
    for implementation in implementations:
        ours = model_from_hf_config({**theirs.config.to_dict(), "attn_implementation": implementation})
        ours.load_state_dict(theirs.state_dict())
        models[f"speechtrain ({implementation})"] = ours.to(device).train()
    models[f"transformers ({theirs.config._attn_implementation})"] = theirs.to(device).train()
    return models


def feature_rates(ours: Callable[[list[torch.Tensor]], object], theirs: Callable[..., object],
                  waveforms: list[torch.Tensor], rounds: int, **theirs_options: object) -> tuple[float, float]:
    """Seconds of 16 kHz audio per second that our feature extractor (`ours(waveforms)`) and transformers'
    (`theirs(numpy waveforms, sampling_rate=16000, return_tensors="pt", **theirs_options)`) turn into features on
    the CPU, each the best of `rounds` alternating rounds."""
    numpy_waves = [w.numpy() for w in waveforms]
    rates = best_rates({
        "speechtrain": lambda: ours(waveforms),
        "transformers": lambda: theirs(numpy_waves, sampling_rate=16000, return_tensors="pt", **theirs_options),
    }, 3, rounds, "cpu")
    audio = sum(len(w) for w in waveforms) / 16000
    return audio * rates["speechtrain"], audio * rates["transformers"]


def add_common_arguments(parser: argparse.ArgumentParser, steps: int, sizes: Iterable[str], default_size: str) -> None:
    """The options every model benchmark takes: --size (one of `sizes`; what a size means and the input length are
    each script's own), batch, tokens, steps, rounds, device and dtype."""
    parser.add_argument("--size", choices=sorted(sizes), default=default_size)
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


def tts_batch(batch_size: int, tokens: int, seconds: tuple[float, float], vocab_size: int, sample_rate: int,
              n_fft: int, hop: int) -> dict[str, Any]:
    """Random texts of about `tokens` ids and random audio of `seconds` (whole frames), padded by `TtsCollator`;
    the first row is the longest in both."""
    from speechtrain.data.tts import TtsCollator

    generator = torch.Generator().manual_seed(0)
    items = []
    for row in range(batch_size):
        text_length = tokens if row == 0 else int(torch.randint(int(0.8 * tokens), tokens + 1, (), generator=generator))
        low, high = (int(s * sample_rate / hop) for s in seconds)
        frames = high if row == 0 else int(torch.randint(low, high + 1, (), generator=generator))
        audio = (0.1 * torch.randn(frames * hop, generator=generator)).clamp(-1, 1)
        token_ids = torch.randint(1, vocab_size, (text_length,), generator=generator).tolist()
        items.append({"id": f"utt{row}", "text": "", "token_ids": token_ids, "audio": audio, "speaker_id": None})
    return TtsCollator(n_fft, hop, n_fft, pad_id=0)(items)


def lightning_step_fn(task: Any, batch: Any) -> Callable[[], None]:
    """A manual-optimisation LightningModule's `training_step` without a Trainer: its hooks `optimizers`,
    `manual_backward` and `log` made plain calls, the optimizers its own `configure_optimizers` returns."""
    optimizers, _ = task.configure_optimizers()
    task.optimizers = lambda: tuple(optimizers)
    task.manual_backward = lambda loss: loss.backward()
    task.log = task.log_dict = lambda *args, **kwargs: None
    task.train()
    return lambda: task.training_step(batch, 0)


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def batch_to(batch: dict[str, Any], device: str) -> dict[str, Any]:
    """The batch with its tensors on `device` (other values as they are)."""
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


def print_gan_step_table(seconds: Mapping[str, list[float]], peer: str,
                         counts: Mapping[str, tuple[int, int]]) -> None:
    """The markdown table of a GAN step timed beside a peer (`seconds` of `speechtrain` and of `peer`, from
    `time_rounds`) with the networks' parameter counts (ours, the peer's)."""
    ours_s, peer_s = statistics.median(seconds["speechtrain"]), statistics.median(seconds[peer])
    print(f"| | speechtrain | {peer} | ratio ({peer} / ours) |")
    print("|---|---:|---:|---:|")
    print(f"| GAN step (D + G), median s | {ours_s:.3f} | {peer_s:.3f} | {peer_s / ours_s:.2f} |")
    spread = {name: f"{min(values):.3f}-{max(values):.3f}" for name, values in seconds.items()}
    print(f"| GAN step, min-max s | {spread['speechtrain']} | {spread[peer]} | |")
    for part, (our_count, peer_count) in counts.items():
        print(f"| {part} parameters | {our_count:,} | {peer_count:,} | {peer_count / our_count:.3f} |")
