"""Recovering the posterior encoder of a voice that ships without one (a Piper `.onnx`), by self-distillation.

GAN fine-tuning of VITS runs the decoder on the posterior's latent of real recordings, so a voice imported from
ONNX (text encoder, duration predictor, flow and decoder, but no posterior encoder) needs one first. The voice's
own synthesis supplies training pairs whose latent is known exactly: for a sentence, synthesis draws the prior
sample, maps it back through the flow to `z = flow^-1(z_p)` and decodes `y = decoder(z)`. The posterior encoder,
trained alone (every other weight frozen) to maximise `log q(z | spectrogram(y))`, learns the inverse of this
decoder on this voice's own speech: the Gaussian negative log-likelihood of `z` under its `(m_q, logs_q)`. The
pool of pairs is synthesised once, with the voice's inference noise, so that the latents cover what the decoder
meets, and the steps then cost only the posterior's forward and backward pass.

`reconstruction_mel_l1` measures the result as VITS's training does (its mel loss without the x45 weight): a
recording's linear spectrogram through the posterior (its mean) and the decoder, and the L1 distance of the log-mel
of what comes out to the recording's.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from speechtrain.data.spectrogram import linear_spectrogram, mel_spectrogram, spectrogram_to_mel
from speechtrain.errors import DataError, SpeechtrainError
from speechtrain.models.vits.modeling import VitsModel

HOP_LENGTH_CHECK = "the posterior's spectrogram frames must be the decoder's latent frames (hop = prod(upsample_rates))"


@dataclass
class DistillationPair:
    """One synthesised sentence: its latent `z` `[C, frames]` and linear spectrogram `[bins, frames]`."""

    latent: torch.Tensor
    spectrogram: torch.Tensor


def stft_sizes(model: VitsModel) -> dict[str, int]:
    """The STFT the posterior encoder reads: `spectrogram_bins` gives n_fft, the decoder's upsampling the hop."""
    n_fft = 2 * (model.config.spectrogram_bins - 1)
    return {"n_fft": n_fft, "hop_length": model.hop_length, "win_length": n_fft}


@torch.no_grad()
def synthesise_pairs(model: VitsModel, id_sequences: Sequence[Sequence[int]], speaker_id: int | None = None,
                     samples_per_sentence: int = 1, progress: bool = True) -> list[DistillationPair]:
    """The pool of (latent, spectrogram) pairs, one sentence at a time, with the config's inference noise."""
    model.eval()
    pairs = []
    jobs = [ids for ids in id_sequences for _ in range(samples_per_sentence)]
    for ids in tqdm(jobs, desc="synthesising latents", unit="utt", disable=not progress):
        z, frame_mask, speaker = model.synthesize_latent(torch.tensor([list(ids)]), speaker_id=speaker_id)
        waveform = model.decoder(z, speaker)[:, 0]  # [1, frames * hop]
        spectrogram = linear_spectrogram(waveform, **stft_sizes(model))  # [1, bins, frames]
        if spectrogram.shape[-1] != z.shape[-1]:
            raise ValueError(f"{spectrogram.shape[-1]} spectrogram frames for {z.shape[-1]} latent frames: "
                             + HOP_LENGTH_CHECK)
        pairs.append(DistillationPair(z[0], spectrogram[0]))
    return pairs


def _batch(pairs: Sequence[DistillationPair]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded latents `[B, C, T]`, spectrograms `[B, bins, T]` and the frame mask `[B, 1, T]`."""
    frames = max(pair.latent.shape[-1] for pair in pairs)
    latents = torch.zeros(len(pairs), pairs[0].latent.shape[0], frames)
    spectrograms = torch.zeros(len(pairs), pairs[0].spectrogram.shape[0], frames)
    mask = torch.zeros(len(pairs), 1, frames)
    for row, pair in enumerate(pairs):
        length = pair.latent.shape[-1]
        latents[row, :, :length], spectrograms[row, :, :length], mask[row, :, :length] = (
            pair.latent, pair.spectrogram, 1.0)
    return latents, spectrograms, mask


def latent_nll(model: VitsModel, pairs: Sequence[DistillationPair], speaker_id: int | None = None) -> torch.Tensor:
    """Mean Gaussian negative log-likelihood (per latent value, without the constant) of the pairs' latents under
    the posterior of their spectrograms."""
    latents, spectrograms, mask = _batch(pairs)
    speaker = model.speaker_embedding(speaker_id, len(pairs))
    _, means, log_stddevs = model.posterior_encoder(spectrograms, mask, speaker)
    nll = log_stddevs + 0.5 * ((latents - means) * torch.exp(-log_stddevs)) ** 2  # [B, C, T]
    return (nll * mask).sum() / (mask.sum() * latents.shape[1])


def recover_posterior(model: VitsModel, pairs: Sequence[DistillationPair], steps: int = 400, batch_size: int = 8,
                      learning_rate: float = 2e-4, speaker_id: int | None = None, seed: int = 0,
                      progress: bool = True) -> list[float]:
    """Trains `model.posterior_encoder` alone on `pairs` (AdamW, VITS's betas); returns the loss of every step.
    The other weights are left as they were, and every parameter's `requires_grad` is restored."""
    if not pairs:
        raise DataError("posterior recovery needs at least one synthesised sentence")
    flags = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    model.requires_grad_(False)
    model.posterior_encoder.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.posterior_encoder.parameters(), lr=learning_rate, betas=(0.8, 0.99), eps=1e-9)
    order = random.Random(seed)
    losses = []
    model.eval()
    model.posterior_encoder.train()
    try:
        for _ in tqdm(range(steps), desc="recovering the posterior encoder", disable=not progress):
            loss = latent_nll(model, order.sample(list(pairs), min(batch_size, len(pairs))), speaker_id)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    finally:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(flags[name])
        model.eval()
    return losses


@torch.no_grad()
def reconstruction_mel_l1(model: VitsModel, recordings: Sequence[torch.Tensor], n_mels: int = 80,
                          speaker_id: int | None = None) -> float:
    """VITS's mel L1 (without its x45 weight) of recordings `[samples]` at the model's sampling rate, through the
    posterior's mean and the decoder, averaged over every frame of every recording."""
    model.eval()
    sizes = stft_sizes(model)
    mel_settings = {"n_fft": sizes["n_fft"], "n_mels": n_mels, "sample_rate": model.config.sampling_rate}
    speaker = model.speaker_embedding(speaker_id, 1)
    total, frames = 0.0, 0
    for audio in recordings:
        spectrogram = linear_spectrogram(audio[None], **sizes)  # [1, bins, T]
        mask = torch.ones(1, 1, spectrogram.shape[-1])
        _, means, _ = model.posterior_encoder(spectrogram, mask, speaker)
        waveform = model.decoder(means, speaker)  # [1, 1, T * hop]
        real = spectrogram_to_mel(spectrogram, **mel_settings)
        fake = mel_spectrogram(waveform, hop_length=sizes["hop_length"], win_length=sizes["win_length"],
                               **mel_settings)
        total += float((fake - real).abs().mean(dim=1).sum())
        frames += spectrogram.shape[-1]
    return total / frames


def recover_folder(folder: str | Path, out_dir: str | Path, sentences: Sequence[str], steps: int = 400,
                   samples_per_sentence: int = 2, batch_size: int = 8, learning_rate: float = 2e-4,
                   speaker_id: int | None = None, seed: int = 0) -> list[float]:
    """`speechtrain-recover-posterior`: the VITS folder `folder` (e.g. an imported Piper voice) with its posterior
    encoder recovered on the voice's synthesis of `sentences`, written to `out_dir`; returns the step losses."""
    from speechtrain.hub import load_bundle, save_bundle

    torch.manual_seed(seed)
    model, tokenizer, _ = load_bundle(folder)
    pairs = synthesise_pairs(model, [tokenizer.encode(text) for text in sentences], speaker_id, samples_per_sentence)
    losses = recover_posterior(model, pairs, steps, batch_size, learning_rate, speaker_id, seed)
    save_bundle(out_dir, model, tokenizer)
    return losses


def main(argv: list[str] | None = None) -> None:
    from speechtrain.data.corpora import read_sentences

    parser = argparse.ArgumentParser(description="Recover the posterior encoder of a VITS voice that lacks one (an "
                                                 "imported Piper .onnx) by self-distillation on its own synthesis.")
    parser.add_argument("folder", help="the VITS folder (speechtrain-import-piper's output)")
    parser.add_argument("out_dir", help="the folder to write, with the recovered posterior encoder")
    parser.add_argument("--sentences", required=True,
                        help="text to synthesise: one sentence per line, or id|text lines (e.g. a metadata.csv)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--samples-per-sentence", type=int, default=2, help="noise draws per sentence in the pool")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--speaker-id", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        sentences = [text for _, text in read_sentences(args.sentences)]
        losses = recover_folder(args.folder, args.out_dir, sentences, args.steps, args.samples_per_sentence,
                                args.batch_size, args.lr, args.speaker_id, args.seed)
    except (FileNotFoundError, SpeechtrainError) as exc:
        parser.exit(1, f"speechtrain-recover-posterior: error: {exc}\n")
    first, last = losses[0], sum(losses[-10:]) / len(losses[-10:])
    print(f"recovered the posterior encoder of {args.folder} into {args.out_dir}: latent NLL {first:.3f} -> {last:.3f}")


if __name__ == "__main__":
    main()
