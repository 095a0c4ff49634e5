"""EnCodec acoustic tokens: waveforms to `[frames, levels]` codes and back.

Built on the PyPI `encodec` package (Meta's original implementation) rather than transformers'
port: it loads the official `encodec_24khz-d7cc33bc.th` state dict that Bark and SoundStorm users
already have, it is pure torch and small, and transformers stays a development dependency only.
Bark's coarse/fine tokens and SoundStorm's targets are this model's codes at 6 kbps: 8 residual
levels of 1024 entries at 75 frames per second.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import torch
import torchaudio

from speechtrain.data.frozen_model import WrapsFrozenModel
from speechtrain.errors import CheckpointError, ConfigError
from speechtrain.safe_load import load_untrusted

logger = logging.getLogger(__name__)

OFFICIAL_CHECKPOINT = "encodec_24khz-d7cc33bc.th"
SUPPORTED_SAMPLE_RATE = 24000
RANDOM_INIT_SEED = 0  # random weights are seeded, so two runs without a checkpoint give the same codes


def _build_encodec_24khz():
    """The 24 kHz causal architecture (weights initialised, not loaded)."""
    from encodec import EncodecModel

    with warnings.catch_warnings():  # encodec uses torch's deprecated weight_norm API
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        return EncodecModel.encodec_model_24khz(pretrained=False)


def _load_state_dict(model: torch.nn.Module, checkpoint: str | Path) -> None:
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"EnCodec checkpoint {path} not found; give the official {OFFICIAL_CHECKPOINT} "
            "(https://dl.fbaipublicfiles.com/encodec/v0/" + OFFICIAL_CHECKPOINT + ")"
        )
    state = load_untrusted(path, "EnCodec state dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict (a mapping of tensors), got {type(state).__name__}")
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} is not an {OFFICIAL_CHECKPOINT} state dict: {len(missing)} keys missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: tensor shapes do not match the 24 kHz EnCodec model ({err})") from err


class EncodecCodec(WrapsFrozenModel):
    """The 24 kHz EnCodec model at one bandwidth, in eval mode, without gradients.

    `checkpoint=None` gives seeded random weights (tests and smoke runs; a warning says so), a path
    loads the official `encodec_24khz-d7cc33bc.th`. `model` injects an already built `EncodecModel`
    (tests use a narrow one); its codebooks are randomised like the default's when no checkpoint is given.
    """

    def __init__(
        self,
        bandwidth: float = 6.0,
        checkpoint: str | Path | None = None,
        sample_rate: int = SUPPORTED_SAMPLE_RATE,
        model: torch.nn.Module | None = None,
    ):
        if sample_rate != SUPPORTED_SAMPLE_RATE:
            raise ConfigError(
                f"sample_rate={sample_rate}: only the {SUPPORTED_SAMPLE_RATE} Hz EnCodec model is supported "
                "(the one whose codes Bark and SoundStorm use)"
            )
        self.name = "encodec_24khz" if model is None else f"custom:{getattr(model, 'name', 'unset')}"
        if model is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                model = _build_encodec_24khz()
        if checkpoint is not None:
            _load_state_dict(model, checkpoint)
        else:
            logger.warning("EnCodec has RANDOM weights (no checkpoint given): its codes mean nothing; "
                           "fine for tests and smoke runs only")
            self._randomise_empty_codebooks(model)
        if bandwidth not in model.target_bandwidths:
            raise ConfigError(f"bandwidth={bandwidth} kbps is not one of EnCodec's {model.target_bandwidths}")
        model.set_target_bandwidth(bandwidth)
        self.model = model.eval().requires_grad_(False)
        self.bandwidth = float(bandwidth)
        self.checkpoint = None if checkpoint is None else str(Path(checkpoint).expanduser().resolve())

    @staticmethod
    @torch.no_grad()
    def _randomise_empty_codebooks(model: torch.nn.Module) -> None:
        """encodec starts its codebooks at zero (k-means fills them on the first training batch), which
        maps everything to code 0: give them seeded random entries at the scale of the encoder's output
        on a seeded noise probe, so that random codes vary like real ones."""
        generator = torch.Generator().manual_seed(RANDOM_INIT_SEED)
        probe = 0.1 * torch.randn(1, 1, model.sample_rate // 5, generator=generator)  # 0.2 s of noise
        scale = model.encoder(probe.to(next(model.parameters()).device)).std().item()
        for layer in model.quantizer.vq.layers:
            codebook = layer._codebook
            if not bool(codebook.inited):
                codebook.embed.copy_(scale * torch.randn(codebook.embed.shape, generator=generator))
                codebook.inited.fill_(1.0)

    @property
    def sample_rate(self) -> int:
        return int(self.model.sample_rate)

    @property
    def hop_length(self) -> int:
        """Samples per frame (320 at 24 kHz)."""
        return int(math.prod(self.model.encoder.ratios))

    @property
    def frame_rate(self) -> int:
        return int(self.model.frame_rate)

    @property
    def num_levels(self) -> int:
        """Residual codebooks used at this bandwidth (8 at 6 kbps)."""
        return int(self.model.quantizer.get_num_quantizers_for_bandwidth(self.frame_rate, self.bandwidth))

    @property
    def codebook_size(self) -> int:
        return int(self.model.quantizer.bins)

    def settings(self) -> dict:
        """What identifies these codes; `speechtrain.data.token_shards` stores it and refuses to mix others."""
        return {"name": self.name, "sample_rate": self.sample_rate, "frame_rate": self.frame_rate,
                "num_levels": self.num_levels, "codebook_size": self.codebook_size, "bandwidth": self.bandwidth,
                "checkpoint": self.checkpoint}

    @torch.no_grad()
    def encode(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Codes of one mono waveform [samples] at `sample_rate` (resampled to 24 kHz).

        Returns a LongTensor [frames, levels] on the model's device, frames = ceil(samples_24k / 320).
        """
        if waveform.dim() != 1 or waveform.numel() == 0:
            raise ValueError(f"expected one non-empty mono waveform [samples], got shape {tuple(waveform.shape)}")
        waveform = waveform.to(self.device, torch.float32)
        if sample_rate != self.sample_rate:
            waveform = torchaudio.functional.resample(waveform, sample_rate, self.sample_rate)
        (codes, _scale), = self.model.encode(waveform[None, None])  # codes [1, levels, frames]
        return codes[0].T.long()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Waveforms at 24 kHz from codes [batch, frames, levels] (or [frames, levels]).

        Any number of levels up to the model's total works (fewer levels = a lower bandwidth, as in
        Bark's coarse stage). Returns [batch, frames * 320] (or [frames * 320]).
        """
        if codes.dim() not in (2, 3) or codes.is_floating_point() or codes.is_complex():
            raise ValueError(f"codes must be an integer tensor [batch, frames, levels] or [frames, levels], "
                             f"got {codes.dtype} of shape {tuple(codes.shape)}")
        batched = codes if codes.dim() == 3 else codes[None]
        levels = batched.shape[-1]
        if not 1 <= levels <= self.model.quantizer.n_q:
            raise ValueError(f"codes have {levels} levels; this EnCodec has 1 to {self.model.quantizer.n_q}")
        if batched.numel() and (batched.min() < 0 or batched.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got values in "
                             f"[{int(batched.min())}, {int(batched.max())}]")
        frames = batched.to(self.device).long().transpose(1, 2)  # [batch, levels, frames]
        audio = self.model.decode([(frames, None)])[:, 0]  # [batch, samples]
        return audio if codes.dim() == 3 else audio[0]
