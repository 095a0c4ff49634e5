"""VITS (Kim et al. 2021): conditional VAE + normalizing flow + adversarially trained HiFi-GAN decoder, with
transformers' parameter names so MMS checkpoints load (through `hub.py`).

`forward` synthesises speech as transformers' `VitsModel` does; `forward_train` is the training pass of
jaywalnut310/vits (`SynthesizerTrn.forward`): posterior latent from the linear spectrogram, flow to the prior's
space, monotonic alignment search, duration loss, and the decoder run on a random latent segment. The losses
that compare waveforms and the discriminators belong to the training task.

Layout: hidden states are channel-first `[B, C, T]` between the components; masks are `[B, 1, T]` floats.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from speechtrain.layers.alignment import monotonic_alignment_search
from speechtrain.models.vits.config import VitsConfig
from speechtrain.models.vits.decoder import HifiGanResidualBlock, HifiGanResidualBlock2, VitsHifiGan
from speechtrain.models.vits.duration_predictor import VitsDurationPredictor, VitsStochasticDurationPredictor
from speechtrain.models.vits.flow import VitsResidualCouplingBlock, VitsResidualCouplingLayer
from speechtrain.models.vits.posterior_encoder import VitsPosteriorEncoder
from speechtrain.models.vits.text_encoder import VitsEncoderLayer, VitsTextEncoder


def lengths_to_mask(lengths: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
    """`[B]` lengths -> boolean `[B, max_length]`, True inside each length. The longest length stays a tensor, so
    that a traced (ONNX) synthesis keeps the output length dynamic."""
    max_length = lengths.max() if max_length is None else max_length
    return torch.arange(max_length, device=lengths.device) < lengths[:, None]


def durations_to_alignment(durations: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Integer durations `[B, text]` -> hard monotonic alignment `[B, text, frames]` (token i covers the frames
    between the cumulative durations before and through it), zeroed outside `mask` `[B, text, frames]`."""
    frames = torch.arange(mask.shape[-1], device=durations.device, dtype=durations.dtype)
    covered = (frames < durations.cumsum(dim=1)[..., None]).to(mask.dtype)  # [B, text, frames]
    return (covered - F.pad(covered, (0, 0, 1, 0))[:, :-1]) * mask


def prior_log_likelihood(z_p: torch.Tensor, means: torch.Tensor, log_stddevs: torch.Tensor) -> torch.Tensor:
    """log N(z_p[:, :, frame]; means[:, :, token], exp(log_stddevs)) summed over channels, for every pair:
    `[B, C, frames]`, `[B, C, text]` -> `[B, text, frames]` (expanded so it costs matrix products only).

    At least float32, with autocast off: the scores of neighbouring tokens with close priors differ by far less
    than bf16's rounding of the matmuls, and the alignment search would pick between them by that rounding.
    """
    dtype = torch.promote_types(z_p.dtype, torch.float32)
    z_p, means, log_stddevs = z_p.to(dtype), means.to(dtype), log_stddevs.to(dtype)
    with torch.autocast(device_type=z_p.device.type, enabled=False):
        inverse_variance = torch.exp(-2 * log_stddevs)  # [B, C, text]
        constant = torch.sum(-0.5 * math.log(2 * math.pi) - log_stddevs, dim=1)[..., None]  # [B, text, 1]
        quadratic = -0.5 * inverse_variance.transpose(1, 2) @ z_p**2  # [B, text, frames]
        cross = (means * inverse_variance).transpose(1, 2) @ z_p  # [B, text, frames]
        mean_term = torch.sum(-0.5 * means**2 * inverse_variance, dim=1)[..., None]  # [B, text, 1]
        return constant + quadratic + cross + mean_term


def random_segment_starts(lengths: torch.Tensor, segment_size: int) -> torch.Tensor:
    """Uniform start frames `[B]` such that `segment_size` frames fit inside each length (0 when too short)."""
    last_start = torch.clamp_min(lengths - segment_size, 0)
    return (torch.rand(lengths.shape, device=lengths.device) * (last_start + 1)).long()


def slice_segments(x: torch.Tensor, starts: torch.Tensor, segment_size: int) -> torch.Tensor:
    """`[B, C, T]` -> `[B, C, segment_size]` from each row's start; zero-padded past the end. The task slices
    the target waveform with `starts * hop_length` and `segment_size * hop_length`."""
    overhang = int(starts.max()) + segment_size - x.shape[-1]
    if overhang > 0:
        x = F.pad(x, (0, overhang))
    index = starts[:, None] + torch.arange(segment_size, device=x.device)  # [B, segment_size]
    return x.gather(2, index[:, None, :].expand(-1, x.shape[1], -1))


class VitsModel(nn.Module):
    # FSDP and activation-checkpointing units: text-encoder layers, flow coupling layers, HiFi-GAN residual blocks
    block_classes: ClassVar[tuple[type[nn.Module], ...]] = (VitsEncoderLayer, VitsResidualCouplingLayer,
                                                            HifiGanResidualBlock, HifiGanResidualBlock2)

    def __init__(self, config: VitsConfig):
        super().__init__()
        self.config = config
        self.text_encoder = VitsTextEncoder(config)
        self.flow = VitsResidualCouplingBlock(config)
        self.decoder = VitsHifiGan(config)
        stochastic = config.use_stochastic_duration_prediction
        self.duration_predictor = (VitsStochasticDurationPredictor if stochastic else VitsDurationPredictor)(config)
        if config.num_speakers > 1:
            self.embed_speaker = nn.Embedding(config.num_speakers, config.speaker_embedding_size)
        self.posterior_encoder = VitsPosteriorEncoder(config)

    @property
    def hop_length(self) -> int:
        """Waveform samples per latent frame."""
        return self.config.hop_length

    def speaker_embedding(self, speaker_id: int | torch.Tensor | None, batch_size: int) -> torch.Tensor | None:
        """`[B or 1, E, 1]` for a multi-speaker model, else None. Like transformers, a multi-speaker model called
        without `speaker_id` runs unconditioned, and a single-speaker one ignores it."""
        if self.config.num_speakers <= 1 or speaker_id is None:
            return None
        ids = torch.as_tensor(speaker_id, device=self.embed_speaker.weight.device).long().reshape(-1)
        if ids.numel() not in (1, batch_size):
            raise ValueError(f"speaker_id has {ids.numel()} entries; give one id, or one per batch row ({batch_size})")
        if int(ids.min()) < 0 or int(ids.max()) >= self.config.num_speakers:
            raise ValueError(f"speaker_id {ids.tolist()} outside [0, {self.config.num_speakers - 1}]")
        return self.embed_speaker(ids)[..., None]

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`input_ids` `[B, T]` -> hidden `[B, d, T]`, prior means and log-deviations `[B, flow_size, T]`, text
        mask `[B, 1, T]`."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, tokens], got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        elif attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids "
                             f"{tuple(input_ids.shape)}; they must match")
        padding_mask = attention_mask[..., None].to(self.text_encoder.embed_tokens.weight.dtype)  # [B, T, 1]
        hidden, means, log_stddevs = self.text_encoder(input_ids, padding_mask)
        return hidden.transpose(1, 2), means.transpose(1, 2), log_stddevs.transpose(1, 2), padding_mask.transpose(1, 2)

    def predict_durations(
        self,
        hidden: torch.Tensor,
        text_mask: torch.Tensor,
        speaker: torch.Tensor | None = None,
        noise_scale_duration: float | None = None,
        length_scale: float | None = None,
    ) -> torch.Tensor:
        """Frames per token `[B, 1, text]` (the duration predictor's sample, scaled and rounded up) for the text
        encoder's `hidden` `[B, d, text]`, `text_mask` `[B, 1, text]` and speaker embedding; the scales default as
        in `synthesize_latent`."""
        if noise_scale_duration is None:
            noise_scale_duration = self.config.noise_scale_duration
        length_scale = 1.0 / self.config.speaking_rate if length_scale is None else length_scale
        log_durations = self.duration_predictor.log_durations(hidden, text_mask, speaker, noise_scale_duration)
        return torch.ceil(torch.exp(log_durations) * text_mask * length_scale)

    def synthesize_latent(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        speaker_id: int | torch.Tensor | None = None,
        noise_scale: float | None = None,
        noise_scale_duration: float | None = None,
        length_scale: float | None = None,
        durations: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The latent the decoder turns into speech: `z` `[B, flow_size, frames]` (the prior sample mapped back
        through the flow), its frame mask `[B, 1, frames]` and the speaker embedding (`[B or 1, E, 1]` or None).

        The scales default to the config's `noise_scale`, `noise_scale_duration` and `1 / speaking_rate`; zero
        noise scales make the output deterministic. `durations` `[B, 1, text]` (frames per token) replace the
        predicted ones, e.g. a prediction of `predict_durations` that is drawn beside the speech it gives.
        """
        noise_scale = self.config.noise_scale if noise_scale is None else noise_scale
        hidden, means, log_stddevs, text_mask = self.encode_text(input_ids, attention_mask)
        speaker = self.speaker_embedding(speaker_id, input_ids.shape[0])
        if durations is None:
            durations = self.predict_durations(hidden, text_mask, speaker, noise_scale_duration, length_scale)
        frame_lengths = torch.clamp_min(durations.sum(dim=(1, 2)), 1).long()  # [B]
        frame_mask = lengths_to_mask(frame_lengths)[:, None].to(text_mask.dtype)  # [B, 1, frames]
        alignment = durations_to_alignment(durations[:, 0], text_mask.transpose(1, 2) * frame_mask)

        means, log_stddevs = means @ alignment, log_stddevs @ alignment  # [B, flow_size, frames]
        z_p = means + torch.randn_like(means) * torch.exp(log_stddevs) * noise_scale
        return self.flow(z_p, frame_mask, speaker, reverse=True) * frame_mask, frame_mask, speaker

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        speaker_id: int | torch.Tensor | None = None,
        noise_scale: float | None = None,
        noise_scale_duration: float | None = None,
        length_scale: float | None = None,
        durations: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Synthesis: `input_ids` `[B, T]` -> waveform `[B, samples]` (padded) and each row's length `[B]`; the
        scales and `durations` as in `synthesize_latent`."""
        z, frame_mask, speaker = self.synthesize_latent(input_ids, attention_mask, speaker_id, noise_scale,
                                                        noise_scale_duration, length_scale, durations)
        waveform = self.decoder(z, speaker)[:, 0]  # [B, frames * hop_length]
        return waveform, frame_mask.sum(dim=(1, 2)).long() * self.hop_length

    def forward_train(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        spectrogram: torch.Tensor,
        spectrogram_mask: torch.Tensor,
        speaker_id: torch.Tensor | None = None,
        segment_size: int = 32,
    ) -> dict[str, torch.Tensor]:
        """The training pass of the generator.

        Args:
            input_ids, attention_mask: `[B, text]` tokens and their padding mask (1 = real).
            spectrogram: linear magnitude spectrogram `[B, spectrogram_bins, frames]`.
            spectrogram_mask: `[B, frames]` (1 = real frame).
            speaker_id: `[B]` ids, required for a multi-speaker model.
            segment_size: latent frames decoded per row (`segment_size * hop_length` samples).

        Returns a dict of:
            waveform `[B, 1, segment_size * hop_length]` decoded from the latent segment starting at `ids_slice`
            `[B]` (in frames; `ids_slice * hop_length` in samples); `duration_loss` (scalar: the duration
            predictor's loss summed over the batch, divided by the number of tokens, as the original);
            `alignment` `[B, text, frames]`; `text_mask` `[B, 1, text]`; `z_mask` `[B, 1, frames]`; the posterior
            sample `z`, its mean `m_q` and log-deviation `logs_q`, its flow image `z_p`, and the prior `m_p`,
            `logs_p` expanded by the alignment, all `[B, flow_size, frames]` (KL loss: z_p, logs_q, m_p, logs_p).
        """
        batch = input_ids.shape[0]
        if spectrogram.dim() != 3 or spectrogram.shape[:2] != (batch, self.config.spectrogram_bins):
            raise ValueError(f"spectrogram must be [batch={batch}, spectrogram_bins={self.config.spectrogram_bins}, "
                             f"frames], got shape {tuple(spectrogram.shape)}")
        if spectrogram_mask.shape != (batch, spectrogram.shape[2]):
            raise ValueError(f"spectrogram_mask has shape {tuple(spectrogram_mask.shape)}, expected "
                             f"{(batch, spectrogram.shape[2])} (batch, frames)")
        if segment_size < 1:
            raise ValueError(f"segment_size={segment_size} must be a positive number of frames")
        if self.config.num_speakers > 1 and speaker_id is None:
            raise ValueError(f"this model has num_speakers={self.config.num_speakers}; pass speaker_id [batch]")
        hidden, m_p, logs_p, text_mask = self.encode_text(input_ids, attention_mask)
        speaker = self.speaker_embedding(speaker_id, batch)
        z_mask = spectrogram_mask[:, None].to(text_mask.dtype)  # [B, 1, frames]
        z, m_q, logs_q = self.posterior_encoder(spectrogram, z_mask, speaker)
        z_p = self.flow(z, z_mask, speaker)

        with torch.no_grad():
            log_likelihood = prior_log_likelihood(z_p, m_p, logs_p)  # [B, text, frames], float32
            pair_mask = text_mask.transpose(1, 2) * z_mask  # [B, text, frames]
            alignment = monotonic_alignment_search(log_likelihood, pair_mask.float()).to(z.dtype)
        durations = alignment.sum(dim=2)[:, None]  # [B, 1, text]
        duration_loss = self.duration_predictor.loss(hidden, text_mask, durations, speaker).sum() / text_mask.sum()

        ids_slice = random_segment_starts(spectrogram_mask.sum(dim=1).long(), segment_size)
        waveform = self.decoder(slice_segments(z, ids_slice, segment_size), speaker)
        return {
            "waveform": waveform,
            "ids_slice": ids_slice,
            "duration_loss": duration_loss,
            "alignment": alignment,
            "text_mask": text_mask,
            "z_mask": z_mask,
            "z": z,
            "z_p": z_p,
            "m_p": m_p @ alignment,
            "logs_p": logs_p @ alignment,
            "m_q": m_q,
            "logs_q": logs_q,
        }
