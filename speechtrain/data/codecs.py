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
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from speechtrain.data.frozen_model import WrapsFrozenModel, right_padded, sample_rate_of_each
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


class _BatchPlan(NamedTuple):
    """How `EncodecCodec.encode_batch` runs the encoder: `convs` (the strided convolutions, up to the LSTM) per
    utterance, then `rest` (the LSTM and the last convolution) batched; waveforms of fewer than `shortest`
    samples encode alone."""

    convs: torch.nn.Module
    rest: torch.nn.Module
    shortest: int


def _make_batch_plan(model: torch.nn.Module, hop_length: int) -> _BatchPlan | None:
    """The `_BatchPlan` of a causal SEANet encoder on whole utterances (no normalisation, no segments), else None
    (such a model encodes one utterance at a time)."""
    from encodec.modules import SLSTM, SConv1d, SEANetEncoder

    if model.normalize or model.segment is not None or not isinstance(model.encoder, SEANetEncoder):
        return None
    layers = model.encoder.model
    if not all(module.causal for module in layers.modules() if isinstance(module, SConv1d)):
        return None
    split = next((i for i, layer in enumerate(layers) if isinstance(layer, SLSTM)), len(layers))
    rest = layers[split:]
    shortest_frames, jump = 1, 1  # jump: frames per step of the current layer
    for conv in (module for module in rest.modules() if isinstance(module, SConv1d)):
        (kernel,), (stride,), (dilation,) = conv.conv.conv.kernel_size, conv.conv.conv.stride, conv.conv.conv.dilation
        # encodec's pad1d zero-pads an input no longer than its reflect padding; batched, it would reflect padding
        shortest_frames = max(shortest_frames, jump * (max((kernel - 1) * dilation - (stride - 1), stride) + 1))
        jump *= stride
    return _BatchPlan(layers[:split], rest, hop_length * (shortest_frames - 1) + 1)


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
        self._batch_plan = _make_batch_plan(self.model, self.hop_length)

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
        return self._encode_resampled(self.mono_at_model_rate(waveform, sample_rate))

    @torch.no_grad()
    def encode_batch(self, waveforms: Sequence[torch.Tensor], sample_rates: int | Sequence[int]) -> list[torch.Tensor]:
        """Codes of several mono waveforms [samples_i], the encoder's LSTM batched: LongTensors [frames_i, levels],
        what `encode` gives each up to float rounding (`batch_embeddings`), which can flip a code where two
        codebook entries are about as close (none of the 48,648 codes of the mini corpus with random full-size
        weights).

        Models that cannot be batched exactly (not causal, normalising or segmenting the audio) and waveforms
        too short for encodec's reflect padding (80 ms at 24 kHz) encode one at a time.
        """
        rates = sample_rate_of_each(waveforms, sample_rates)
        resampled = [self.mono_at_model_rate(waveform, rate) for waveform, rate in zip(waveforms, rates)]
        plan = self._batch_plan
        rows = [] if plan is None else [i for i, waveform in enumerate(resampled) if len(waveform) >= plan.shortest]
        codes: dict[int, torch.Tensor] = {}
        if len(rows) > 1:
            embeddings, frames = self.batch_embeddings([resampled[i] for i in rows])
            levels = self.model.quantizer.encode(embeddings, self.model.frame_rate, self.model.bandwidth)
            for row, (i, count) in enumerate(zip(rows, frames)):  # levels [levels, batch, max_frames]
                codes[i] = levels[:, row, :count].T.long()
        return [codes[i] if i in codes else self._encode_resampled(waveform) for i, waveform in enumerate(resampled)]

    @torch.no_grad()
    def batch_embeddings(self, waveforms: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
        """The encoder's output for 24 kHz waveforms [samples_i], each at least `_batch_plan.shortest` long:
        (embeddings [batch, dimension, max_frames], frames_i = ceil(samples_i / 320)).

        The strided convolutions run per utterance, as in `encode` (a padded batch of them would also need the
        reflection of each utterance's own end at every layer, and on a CPU is slower: its activations leave the
        cache). The LSTM and the last convolution, causal, run once on their outputs right-padded with zeros:
        mathematically each utterance's frames are what the encoder gives it alone, but the LSTM's batched
        matmuls round differently from its one-sequence ones (by up to 5e-7 of the largest value on the mini
        corpus).
        """
        plan = self._batch_plan
        if plan is None or min(len(waveform) for waveform in waveforms) < plan.shortest:
            raise ValueError("batch_embeddings needs a causal SEANet encoder on whole utterances and waveforms of at "
                             f"least {getattr(plan, 'shortest', '?')} samples; encode_batch encodes others alone")
        hidden = [plan.convs(waveform[None, None])[0] for waveform in waveforms]  # each [channels, frames_i]
        frames = [part.shape[-1] for part in hidden]
        return plan.rest(right_padded(hidden)), frames  # rest of [batch, channels, max_frames]

    def _encode_resampled(self, waveform: torch.Tensor) -> torch.Tensor:
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
