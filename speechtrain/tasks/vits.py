"""VITS training (Kim et al. 2021): the generator against multi-period and multi-scale discriminators.

Manual optimisation, as the original's train.py: each step first updates the discriminator on real
segments against detached generated ones, then the generator on least-squares adversarial + feature
matching + 45 x mel L1 + KL + duration losses. Two AdamW optimisers (betas 0.8/0.99, eps 1e-9) decay
exponentially once per epoch. Spectrograms and losses are computed in fp32 under mixed precision.

Each network's gradient norm is logged (`train/grad_norm_g`, `train/grad_norm_d`, as the original's
`grad_norm_g`/`grad_norm_d`) and, with `gradient_clip_val`, clipped, in `on_before_optimizer_step`: under
16-mixed that hook runs after the precision plugin unscales the gradients, so both are in true units.

At each validation (rank zero) the first `num_logged_utterances` validation items are drawn, as
the original logs `all/attn`, `slice/mel_org` and `slice/mel_gen`: the alignment search's alignment (tokens x
frames), the real and the generated log-mel, and the aligned against the predicted durations; the generated
speech uses those predicted durations, and both recordings are logged as audio too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from speechtrain.data.spectrogram import mel_spectrogram, spectrogram_to_mel
from speechtrain.distributed import fewest_on_any_rank, root_gathered
from speechtrain.models.vits import VitsModel, slice_segments
from speechtrain.models.vits.modeling import lengths_to_mask
from speechtrain.plots import durations_image, matrix_image, plotting_available
from speechtrain.safe_load import load_untrusted
from speechtrain.tasks.checkpointing import ExportableTask
from speechtrain.tasks.gan_losses import discriminator_loss, feature_loss, generator_loss, kl_loss
from speechtrain.tasks.guards import NonFiniteGuard, batch_missing_on_any_rank
from speechtrain.tasks.optim import OptimizerFactory
from speechtrain.tasks.sample_logging import log_audio, log_images, mel_images

GRADIENT_NORM_KEYS = {"generator": "train/grad_norm_g", "discriminator": "train/grad_norm_d"}  # the original's names


class VitsTask(ExportableTask, L.LightningModule):
    """Trains a `VitsModel` on `TtsCollator` batches; the discriminator is saved in the checkpoint only."""

    feature_extractor = None  # the task computes its spectrograms itself: nothing to export

    def __init__(
        self,
        model: VitsModel,
        tokenizer: Any,
        discriminator: nn.Module,
        generator_optimizer: OptimizerFactory,
        discriminator_optimizer: OptimizerFactory,
        discriminator_checkpoint: str | None = None,
        lr_decay: float = 0.999875,
        segment_size: int = 32,
        n_fft: int = 1024,
        win_length: int = 1024,
        mel_bins: int = 80,
        f_min: float = 0.0,
        f_max: float | None = None,
        mel_weight: float = 45.0,
        kl_weight: float = 1.0,
        duration_weight: float = 1.0,
        feature_weight: float = 1.0,
        gradient_clip_val: float | None = None,
        validation_sentences: Sequence[str] = (),
        num_logged_utterances: int = 2,
        max_consecutive_nonfinite: int = 10,
        lora: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.model, self.tokenizer, self.discriminator = model, tokenizer, discriminator
        self.add_lora(lora)
        if discriminator_checkpoint is not None:
            discriminator.load_original_state_dict(load_untrusted(discriminator_checkpoint, "VITS discriminator"))
        self.generator_optimizer, self.discriminator_optimizer = generator_optimizer, discriminator_optimizer
        self.lr_decay = lr_decay
        self.segment_size = segment_size
        self.mel_settings = dict(n_fft=n_fft, n_mels=mel_bins, sample_rate=model.config.sampling_rate, f_min=f_min,
                                 f_max=f_max)
        self.win_length = win_length
        self.weights = dict(mel=mel_weight, kl=kl_weight, duration=duration_weight, feature=feature_weight)
        self.gradient_clip_val = gradient_clip_val
        self.validation_sentences = list(validation_sentences)
        self.num_logged_utterances = num_logged_utterances
        self._drawn_utterances: list[dict[str, Any]] = []  # kept by validation_step, drawn at the epoch's end
        # One guard per network: a finite discriminator loss must not reset the generator's run of bad steps.
        self.nonfinite = {"generator": NonFiniteGuard(max_consecutive_nonfinite),
                          "discriminator": NonFiniteGuard(max_consecutive_nonfinite)}
        self._stepping: str | None = None  # the network whose optimizer is stepping, for on_before_optimizer_step
        self._gradient_norms: dict[str, torch.Tensor] = {}  # this batch's, by network, logged by training_step

    def setup(self, stage: str) -> None:
        """Refuse a corpus with more speakers than the model has embeddings for (it would ignore them)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        corpus_speakers = getattr(datamodule, "num_speakers", 1) if datamodule is not None else 1
        if corpus_speakers > self.model.config.num_speakers:
            raise ValueError(
                f"the training corpus has {corpus_speakers} speakers but model.config.num_speakers="
                f"{self.model.config.num_speakers}; set model.config.num_speakers={corpus_speakers} and "
                "model.config.speaker_embedding_size (256 in the original multi-speaker VITS)"
            )

    def generator_pass(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """The generator's training pass, the real waveform segment it must match, and the reconstruction losses."""
        spectrogram_mask = lengths_to_mask(batch["spectrogram_lengths"], batch["spectrogram"].shape[-1])
        out = self.model.forward_train(batch["input_ids"], batch["attention_mask"], batch["spectrogram"],
                                       spectrogram_mask, batch.get("speaker_ids"), self.segment_size)
        hop = self.model.hop_length
        real = slice_segments(batch["waveform"], out["ids_slice"] * hop, self.segment_size * hop)  # [B, 1, S*hop]
        # As the original: the target mel from the batch's spectrogram, sliced like the latent; the generated
        # segment's mel from its waveform. Both in fp32 (the spectrogram functions disable autocast).
        real_mel = slice_segments(spectrogram_to_mel(batch["spectrogram"], **self.mel_settings), out["ids_slice"],
                                  self.segment_size)
        fake_mel = mel_spectrogram(out["waveform"], hop_length=hop, win_length=self.win_length, **self.mel_settings)
        mel_loss = F.l1_loss(fake_mel, real_mel)
        kl = kl_loss(out["z_p"], out["logs_q"], out["m_p"], out["logs_p"], out["z_mask"])
        return out, real, torch.stack([mel_loss, kl, out["duration_loss"].float()])

    def training_step(self, batch: dict[str, Any] | None, batch_idx: int) -> None:
        if batch_missing_on_any_rank(batch, self.device):  # every rank skips together, or DDP's all-reduce hangs
            return
        generator_optimizer, discriminator_optimizer = self.optimizers()
        out, real, (mel_loss, kl, duration_loss) = self.generator_pass(batch)
        fake = out["waveform"]

        real_scores, fake_scores, _, _ = self.discriminator(real, fake.detach())
        loss_d, _, _ = discriminator_loss(real_scores, fake_scores)
        self._update(discriminator_optimizer, loss_d, "discriminator", batch["ids"])

        _, fake_scores, real_features, fake_features = self.discriminator(real, fake)
        adversarial, _ = generator_loss(fake_scores)
        matching = feature_loss(real_features, fake_features)
        w = self.weights
        loss_g = (adversarial + w["feature"] * matching + w["mel"] * mel_loss + w["kl"] * kl
                  + w["duration"] * duration_loss)
        self._update(generator_optimizer, loss_g, "generator", batch["ids"])

        size = len(batch["ids"])
        self.log_dict({"train/loss_g": loss_g, "train/loss_d": loss_d, "train/mel": mel_loss, "train/kl": kl,
                       "train/duration": duration_loss, "train/adversarial": adversarial,
                       "train/feature_matching": matching}, batch_size=size)
        norms = {GRADIENT_NORM_KEYS[network]: norm for network, norm in self._gradient_norms.items()}
        self.log_dict(norms, batch_size=size)  # only the networks that stepped: a skipped step has no gradients
        self._gradient_norms.clear()
        self.log("train/mel_l1", mel_loss, prog_bar=True, batch_size=size)

    def _update(self, optimizer: Any, loss: torch.Tensor, network: str, ids: Sequence[str]) -> None:
        """One optimiser step of "generator" or "discriminator", unless the loss is not finite (then skipped and
        counted). The step measures and clips the gradients first, in `on_before_optimizer_step`."""
        optimizer.zero_grad(set_to_none=True)
        if not self.nonfinite[network].check(loss.detach(), self.global_step, ids):
            return
        self.manual_backward(loss)
        self._stepping = network
        try:
            optimizer.step()
        finally:
            self._stepping = None

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The stepping network's total gradient norm (2-norm, before clipping, as the original logs it), then
        the clip. Lightning calls this inside `optimizer.step()`, after 16-mixed's `scaler.unscale_`: clipping
        before the step, as the task did, clipped gradients still multiplied by the loss scale."""
        if self._stepping is None:
            raise RuntimeError("on_before_optimizer_step outside VitsTask._update: each step must say its network")
        module = self.model if self._stepping == "generator" else self.discriminator
        gradients = [p.grad for p in module.parameters() if p.grad is not None]
        self._gradient_norms[self._stepping] = torch.nn.utils.get_total_norm(gradients).detach()
        if self.gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")

    def on_train_start(self) -> None:
        # Resuming from a checkpoint written after an epoch's last batch, Lightning starts the next epoch
        # without calling `on_train_epoch_start` (nor the previous `on_train_epoch_end`): catch up here too.
        self._decay_learning_rates()

    def on_train_epoch_start(self) -> None:
        self._decay_learning_rates()

    def _decay_learning_rates(self) -> None:
        """One decay per finished epoch, counted from the epoch number, so that any hook may call it."""
        for scheduler in self.lr_schedulers():
            while scheduler.last_epoch < self.current_epoch:
                scheduler.step()

    def validation_step(self, batch: dict[str, Any] | None, batch_idx: int) -> None:
        if batch is None:
            return
        out, _, (mel_loss, kl, duration_loss) = self.generator_pass(batch)
        self.log_dict({"val/mel_l1": mel_loss, "val/kl": kl, "val/duration": duration_loss},
                      batch_size=len(batch["ids"]), sync_dist=True, prog_bar=False)
        self.log("val/loss", self.weights["mel"] * mel_loss + kl + duration_loss, batch_size=len(batch["ids"]),
                 sync_dist=True, prog_bar=True)
        missing = self.num_logged_utterances - len(self._drawn_utterances)
        self._drawn_utterances += [self._utterance(batch, out, row) for row in range(min(missing, len(batch["ids"])))]

    @staticmethod
    def _utterance(batch: dict[str, Any], out: dict[str, torch.Tensor], row: int) -> dict[str, Any]:
        """One validation item unpadded: its tokens `[text]`, speaker, waveform `[samples]` and the alignment
        search's alignment `[text, frames]`."""
        tokens, frames = int(batch["attention_mask"][row].sum()), int(batch["spectrogram_lengths"][row])
        speakers = batch.get("speaker_ids")
        return {"id": batch["ids"][row], "input_ids": batch["input_ids"][row, :tokens],
                "speaker_id": None if speakers is None else speakers[row : row + 1],
                "waveform": batch["waveform"][row, 0, : int(batch["waveform_lengths"][row])],
                "alignment": out["alignment"][row, :tokens, :frames]}

    def on_validation_epoch_start(self) -> None:
        self._drawn_utterances = []

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        # Under FSDP every synthesis gathers parameters collectively, so every rank synthesises the same number of
        # clips (the sentences, then as many of its own utterances as the rank with the fewest has); rank zero logs.
        with root_gathered(self):
            sentences = self.synthesize(self.validation_sentences)
            utterances = self._drawn_utterances[: fewest_on_any_rank(len(self._drawn_utterances), self.device)]
            regenerated = [self._regenerate(utterance) for utterance in utterances]
        if not self.trainer.is_global_zero:
            return
        clips = [(f"sentence_{i}", waveform) for i, waveform in enumerate(sentences)]
        images = []
        drawing = bool(utterances) and plotting_available("VITS's alignment, mel and duration images")
        for utterance, (pair, durations) in zip(utterances, regenerated, strict=True):
            clips += pair
            if drawing:
                aligned = utterance["alignment"].sum(dim=1)  # [text]: frames per token, the duration target
                images += [(f"{utterance['id']}_alignment", matrix_image(utterance["alignment"], 0.0, 1.0)),
                           *mel_images(pair, **self.mel_settings, hop_length=self.model.hop_length,
                                       win_length=self.win_length),
                           (f"{utterance['id']}_durations", durations_image(aligned.tolist(), durations.tolist(),
                                                                            title=utterance["id"]))]
        step = self.global_step // 2  # two optimiser steps per batch; the loggers count batches
        out_dir = Path(self.trainer.default_root_dir) / "samples" / f"step_{step:07d}"
        if clips:
            log_audio(self.loggers, "val/samples", clips, self.model.config.sampling_rate, step, out_dir)
        if images:
            log_images(self.loggers, "val/images", images, step, out_dir)

    @torch.no_grad()
    def _regenerate(self, utterance: dict[str, Any]) -> tuple[list[tuple[str, torch.Tensor]], torch.Tensor]:
        """The utterance's (reference, generated) waveforms, named, and the predicted durations `[text]` that
        the generated one was synthesised with."""
        input_ids = utterance["input_ids"][None]  # [1, text]
        hidden, _, _, text_mask = self.model.encode_text(input_ids)
        speaker = self.model.speaker_embedding(utterance["speaker_id"], 1)
        durations = self.model.predict_durations(hidden, text_mask, speaker)  # [1, 1, text]
        waveform, lengths = self.model(input_ids, speaker_id=utterance["speaker_id"], durations=durations)
        name, generated = utterance["id"], waveform[0, : int(lengths[0])]
        return [(f"{name}_reference", utterance["waveform"]), (f"{name}_generated", generated)], durations[0, 0]

    @torch.no_grad()
    def synthesize(self, texts: Sequence[str], speaker_id: int | None = None, **scales: float) -> list[torch.Tensor]:
        """One waveform per text (1-D), with the model's or the given noise and length scales."""
        waveforms = []
        for text in texts:
            input_ids = torch.tensor([self.tokenizer.encode(text)], device=self.device)
            waveform, lengths = self.model(input_ids, speaker_id=speaker_id, **scales)
            waveforms.append(waveform[0, : int(lengths[0])])
        return waveforms

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[Any]]:
        optimizers = [self.generator_optimizer(self.model.parameters()),
                      self.discriminator_optimizer(self.discriminator.parameters())]
        schedulers = [torch.optim.lr_scheduler.ExponentialLR(o, gamma=self.lr_decay) for o in optimizers]
        return optimizers, schedulers

