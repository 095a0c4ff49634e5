"""VITS side by side with coqui-tts, in one process: the time of one full GAN training step (discriminator
forward/backward/step, then generator forward/backward/step) on the same config and the same batch.

coqui-tts pins its own packages, so it lives in a venv of its own that also holds speechtrain:

    python3 -m venv /work/venv-coqui
    /work/venv-coqui/bin/pip install torch==2.11.0 torchaudio==2.11.0 "coqui-tts[codec]" six \\
        "lightning==2.6.*" hydra-core soundfile safetensors tokenizers jiwer
    /work/venv-coqui/bin/pip install -e . --no-deps
    /work/venv-coqui/bin/python bench/vits.py                  # the LJSpeech VITS, CPU fp32
    /work/venv-coqui/bin/python bench/vits.py --size small     # generator widths halved (discriminators not:
                                                               # coqui's are fixed)
    /work/venv-coqui/bin/python bench/vits.py --device cuda --batch-size 16

Ours runs the real `VitsTask.training_step` (its Lightning hooks `optimizers`, `manual_backward` and `log`
replaced by plain calls, so no Trainer is needed). Coqui's runs `Vits.train_step` for optimizer 0 then 1, each
followed by backward, step and `zero_grad`, as coqui's Trainer does without mixed precision; gradient clipping
is off for both (ours has none by default; coqui's default `grad_clip=[1000, 1000]` is skipped). Both use
AdamW (lr 2e-4, betas 0.8/0.99, eps 1e-9, weight decay 0.01). The batch comes from `TtsCollator`; coqui gets
the same token ids, waveform and linear spectrogram, and its mel targets from that spectrogram, as its
`format_batch_on_device` makes them. Rounds alternate which model goes first; one warm-up round is not timed.
Prints a markdown table (paste into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
from collections.abc import Callable
from typing import Any

import torch
from common import batch_to, lightning_step_fn, parameter_count, print_gan_step_table, time_rounds, tts_batch

try:  # the peer; bench/gpu_suite.py builds ours without it
    from TTS.tts.configs.vits_config import VitsArgs
    from TTS.tts.configs.vits_config import VitsConfig as CoquiVitsConfig
    from TTS.tts.layers.vits.stochastic_duration_predictor import StochasticDurationPredictor
    from TTS.tts.models.vits import Vits as CoquiVits
    from TTS.utils.audio.torch_transforms import spec_to_mel
except ImportError as error:
    COQUI_MISSING: str | None = f"coqui-tts does not import ({error})"
else:
    COQUI_MISSING = None

from speechtrain.data.spectrogram import spectrogram_to_mel
from speechtrain.models.vits import VitsConfig, VitsModel
from speechtrain.models.vits.discriminator import MultiPeriodDiscriminator
from speechtrain.tasks.vits import VitsTask

SAMPLE_RATE, N_FFT, HOP, N_MELS, SEGMENT_FRAMES = 22050, 1024, 256, 80, 32
PERIODS = [2, 3, 5, 7, 11]
SIZES = {  # (hidden = flow size = duration-predictor width, text-encoder ffn, HiFi-GAN initial channels)
    "ljspeech": (192, 768, 512),
    "small": (96, 384, 256),
}
OPTIMIZER = dict(lr=2e-4, betas=(0.8, 0.99), eps=1e-9, weight_decay=0.01)


def build_ours(size: str, vocab_size: int, attn_implementation: str = "sdpa") -> VitsTask:
    hidden, ffn, upsample_channels = SIZES[size]
    config = VitsConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=6, num_attention_heads=2, ffn_dim=ffn,
        flow_size=hidden, window_size=4, layerdrop=0.0, use_stochastic_duration_prediction=True,
        upsample_initial_channel=upsample_channels,
        upsample_rates=[8, 8, 2, 2], upsample_kernel_sizes=[16, 16, 4, 4], resblock_kernel_sizes=[3, 7, 11],
        resblock_dilation_sizes=[[1, 3, 5]] * 3, posterior_encoder_num_wavenet_layers=16,
        prior_encoder_num_wavenet_layers=4, prior_encoder_num_flows=4, duration_predictor_num_flows=4,
        spectrogram_bins=N_FFT // 2 + 1, sampling_rate=SAMPLE_RATE, attn_implementation=attn_implementation,
    )
    optimizer = functools.partial(torch.optim.AdamW, **OPTIMIZER)
    return VitsTask(VitsModel(config), tokenizer=None, discriminator=MultiPeriodDiscriminator(PERIODS),
                    generator_optimizer=optimizer, discriminator_optimizer=optimizer, segment_size=SEGMENT_FRAMES,
                    n_fft=N_FFT, win_length=N_FFT, mel_bins=N_MELS)


def build_coqui(size: str, vocab_size: int) -> CoquiVits:
    hidden, ffn, upsample_channels = SIZES[size]
    args = VitsArgs(
        num_chars=vocab_size, out_channels=N_FFT // 2 + 1, spec_segment_size=SEGMENT_FRAMES, hidden_channels=hidden,
        hidden_channels_ffn_text_encoder=ffn, num_heads_text_encoder=2, num_layers_text_encoder=6,
        num_layers_posterior_encoder=16, num_layers_flow=4, resblock_kernel_sizes_decoder=[3, 7, 11],
        resblock_dilation_sizes_decoder=[[1, 3, 5]] * 3, upsample_rates_decoder=[8, 8, 2, 2],
        upsample_initial_channel_decoder=upsample_channels, upsample_kernel_sizes_decoder=[16, 16, 4, 4],
        periods_multi_period_discriminator=PERIODS, use_sdp=True,
    )
    config = CoquiVitsConfig(model_args=args, lr_gen=OPTIMIZER["lr"], lr_disc=OPTIMIZER["lr"],
                             optimizer_params=dict(betas=list(OPTIMIZER["betas"]), eps=OPTIMIZER["eps"],
                                                   weight_decay=OPTIMIZER["weight_decay"]))
    config.audio.sample_rate, config.audio.fft_size, config.audio.win_length = SAMPLE_RATE, N_FFT, N_FFT
    config.audio.hop_length, config.audio.num_mels, config.audio.mel_fmin, config.audio.mel_fmax = HOP, N_MELS, 0, None
    class CoquiVitsWithoutTokenizer(CoquiVits):
        """Without a `tokenizer` attribute coqui builds its English character tokenizer and takes the vocabulary
        size (67) from it; with `tokenizer = None` it takes `model_args.num_chars`."""

        tokenizer = None

    model = CoquiVitsWithoutTokenizer(config)
    if hidden != 192:  # coqui hard-codes a 192-wide stochastic duration predictor; the original's is `hidden` wide
        model.duration_predictor = StochasticDurationPredictor(hidden, hidden, 3, args.dropout_p_duration_predictor, 4)
    return model


def coqui_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch coqui's `train_step` reads, from the same tensors (its `format_batch` + `format_batch_on_device`)."""
    spec_mask = batch["spectrogram_mask"][:, None].float()
    mel = spec_to_mel(spec=batch["spectrogram"], n_fft=N_FFT, num_mels=N_MELS, sample_rate=SAMPLE_RATE, fmin=0,
                      fmax=None)
    return {
        "tokens": batch["input_ids"], "token_lens": batch["attention_mask"].sum(1), "waveform": batch["waveform"],
        "spec": batch["spectrogram"] * spec_mask, "spec_lens": batch["spectrogram_lengths"], "mel": mel * spec_mask,
        "mel_lens": batch["spectrogram_lengths"], "d_vectors": None, "speaker_ids": None, "language_ids": None,
    }


def coqui_step_fn(model: CoquiVits, batch: dict[str, Any]) -> Callable[[], None]:
    """coqui Trainer's GAN step without mixed precision: per optimizer, train_step, backward, step, zero_grad."""
    optimizers = model.get_optimizer()  # [discriminator, generator]
    criteria = model.get_criterion()
    model.train()

    def step() -> None:
        for index, (optimizer, criterion) in enumerate(zip(optimizers, criteria)):
            _, losses = model.train_step(batch, criterion, index)
            losses["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", default="ljspeech", choices=list(SIZES))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=60, help="longest text (the others 80-100%% of it)")
    parser.add_argument("--seconds", type=float, nargs=2, default=(2.0, 3.0), help="audio length range")
    parser.add_argument("--vocab-size", type=int, default=178)
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per model, after one warm-up")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    if COQUI_MISSING:
        raise SystemExit(f"{COQUI_MISSING}; install it as the module docstring says")

    torch.manual_seed(0)
    ours, coqui = build_ours(args.size, args.vocab_size), build_coqui(args.size, args.vocab_size)
    ours.to(args.device)
    coqui.to(args.device)
    batch = tts_batch(args.batch_size, args.tokens, tuple(args.seconds), args.vocab_size, SAMPLE_RATE, N_FFT, HOP)
    coqui_inputs = coqui_batch(batch)
    mel_difference = (spectrogram_to_mel(batch["spectrogram"], N_FFT, N_MELS, SAMPLE_RATE)
                      * batch["spectrogram_mask"][:, None] - coqui_inputs["mel"]).abs().max().item()
    batch, coqui_inputs = batch_to(batch, args.device), batch_to(coqui_inputs, args.device)

    counts = {
        "generator": (parameter_count(ours.model), parameter_count(coqui) - parameter_count(coqui.disc)),
        "discriminator": (parameter_count(ours.discriminator), parameter_count(coqui.disc)),
    }
    for part, (our_count, coqui_count) in counts.items():
        if abs(our_count - coqui_count) > 0.03 * coqui_count:
            raise SystemExit(f"{part} parameters differ by more than 3%: ours {our_count:,}, coqui {coqui_count:,}")

    load_before = os.getloadavg()[0]
    steps = {"speechtrain": lightning_step_fn(ours, batch), "coqui-tts": coqui_step_fn(coqui, coqui_inputs)}
    seconds = time_rounds(steps, args.rounds, args.device)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    hidden, ffn, upsample_channels = SIZES[args.size]
    print(f"\nVITS training step ({args.size}: hidden {hidden}, 6 text layers x 2 heads, ffn {ffn}, 16 posterior "
          f"WaveNet layers, 4 flows, HiFi-GAN 8-8-2-2 from {upsample_channels} ch, stochastic durations; MPD "
          f"{PERIODS} + 1 scale; {SAMPLE_RATE} Hz, n_fft {N_FFT}, hop {HOP}, {N_MELS} mels, segment "
          f"{SEGMENT_FRAMES * HOP} samples), batch {args.batch_size} x {batch['input_ids'].shape[1]} tokens x "
          f"{batch['waveform'].shape[-1] / SAMPLE_RATE:.2f} s max, {args.device} fp32 ({device_name}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}); median of {args.rounds} alternating steps "
          f"after a warm-up; mel targets agree to {mel_difference:.1e}; load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after (other processes make CPU timings noisy)\n")
    print_gan_step_table(seconds, "coqui-tts", counts)

if __name__ == "__main__":
    main()
