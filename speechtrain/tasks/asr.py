"""Sequence-to-sequence ASR training (Whisper, Speech2Text): one LightningModule for every encoder-decoder.

The task receives a built network, tokenizer and feature extractor and owns what training adds around
them: SpecAugment, label-smoothed cross-entropy, AdamW with warm-up and decay, greedy or beam decoding
for validation WER/CER (from the encoder states of the validation loss: one encoder pass per batch), a few
predictions logged beside their references, and skipping of batches that the data layer emptied or that produce
a non-finite loss. With `log_cross_attention`, each validation also
draws the last decoder layer's cross-attention over its first utterance (reference tokens x encoder positions of
its audio, averaged over heads, the first token at the bottom): a fine-tuned Whisper that still reads the audio
in order draws a diagonal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speechtrain.decoding import decode_to_text
from speechtrain.distributed import is_fully_sharded
from speechtrain.errors import ConfigError
from speechtrain.layers.labels import IGNORE_INDEX
from speechtrain.layers.specaugment import SpecAugment
from speechtrain.plots import matrix_image, plotting_available
from speechtrain.scoring import ErrorCounts, error_counts, get_normalizer
from speechtrain.tasks.checkpointing import ExportableTask
from speechtrain.tasks.guards import GuardedTask
from speechtrain.tasks.optim import OptimizerFactory, warmup_optimizer
from speechtrain.tasks.sample_logging import log_images, log_text_table


class Seq2SeqASRTask(ExportableTask, GuardedTask):
    """Trains an encoder-decoder with the interface of docs/design.md on `AsrCollator` batches."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        feature_extractor: Any,
        optimizer: OptimizerFactory,
        warmup_steps: int = 0,
        lr_decay: str = "linear",
        min_lr_ratio: float = 0.0,
        spec_augment: SpecAugment | None = None,
        label_smoothing: float = 0.0,
        freeze_encoder: bool = False,
        num_beams: int = 1,
        max_new_tokens: int | None = None,
        num_logged_predictions: int = 4,
        max_consecutive_nonfinite: int = 10,
        normalizer: str = "basic",
        lora: Mapping[str, Any] | None = None,
        log_cross_attention: bool = False,
    ) -> None:
        super().__init__(max_consecutive_nonfinite)
        get_normalizer(normalizer)  # an unknown name fails here, not at the first validation
        if log_cross_attention and not hasattr(model, "cross_attention_weights"):
            raise ConfigError(f"task.log_cross_attention=true: {type(model).__name__} has no "
                              "cross_attention_weights(input_features, attention_mask, decoder_input_ids)")
        self.log_cross_attention = log_cross_attention
        self._cross_attention: tuple[str, np.ndarray] | None = None  # this validation's picture, once drawn
        self.model = model
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.optimizer_factory = optimizer
        self.warmup_steps = warmup_steps
        self.lr_decay = lr_decay
        self.min_lr_ratio = min_lr_ratio
        self.spec_augment = spec_augment or SpecAugment()
        self.label_smoothing = label_smoothing
        self.num_beams = num_beams
        self.max_new_tokens = max_new_tokens
        self.num_logged_predictions = num_logged_predictions
        self.normalizer = normalizer  # speechtrain/scoring.py: the same names as speechtrain-evaluate's
        if freeze_encoder:
            self.model.get_encoder().requires_grad_(False)
        self.add_lora(lora)
        self._val_counts = ErrorCounts()
        self._val_samples: list[tuple[str, str, str]] = []

    # --- training -------------------------------------------------------------------------------

    def model_step(self, batch: dict[str, Any], encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        """Label-smoothed cross-entropy over the non-padded label tokens. Validation passes the batch's
        `encoder_hidden_states` `[B, S, d]`, which its decoding reads too: the encoder runs once per batch."""
        if encoder_hidden_states is None:
            features = batch["input_features"]
            if self.training and self.spec_augment.enabled:
                features = self.spec_augment(features, batch["attention_mask"])
            logits = self.model(
                features, batch["attention_mask"], batch["decoder_input_ids"], batch["decoder_attention_mask"]
            )
        else:  # the second half of the model's forward
            logits, _ = self.model.decode(batch["decoder_input_ids"], encoder_hidden_states, batch["attention_mask"],
                                          decoder_attention_mask=batch["decoder_attention_mask"], use_cache=False)
        # [batch, tokens, vocab] -> [batch * tokens, vocab]; the loss in fp32 under mixed precision
        return F.cross_entropy(
            logits.float().flatten(0, 1),
            batch["labels"].flatten(),
            ignore_index=IGNORE_INDEX,
            label_smoothing=self.label_smoothing,
        )

    def training_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.model_step(batch), {}

    # --- validation and test: the same scoring, under `val/` or `test/` ----------------------------

    def on_validation_epoch_start(self) -> None:
        self._start_scoring()

    def validation_step(self, batch: dict[str, Any] | None, batch_idx: int) -> None:
        self._score_batch(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_start(self) -> None:
        self._start_scoring()

    def test_step(self, batch: dict[str, Any] | None, batch_idx: int) -> None:
        self._score_batch(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def _start_scoring(self) -> None:
        self._val_counts = ErrorCounts()
        self._val_samples = []
        self._cross_attention = None

    def _score_batch(self, batch: dict[str, Any] | None, stage: str) -> None:
        if batch is None:
            return
        batch_size = len(batch["ids"])
        # One encoder pass for the loss and the decoding (every rank alike, so FSDP's all-gathers still pair up)
        encoder_hidden_states = self.model.encode(batch["input_features"], batch["attention_mask"])  # [B, S, d]
        loss = self.model_step(batch, encoder_hidden_states)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=batch_size, sync_dist=True)
        hypotheses = decode_to_text(self.model, self.tokenizer, batch["input_features"], batch["attention_mask"],
                                    self.num_beams, self.max_new_tokens, synchronize_ranks=is_fully_sharded(self),
                                    encoder_hidden_states=encoder_hidden_states)
        self._val_counts += error_counts(batch["texts"], hypotheses, self.normalizer)
        room = self.num_logged_predictions - len(self._val_samples)
        self._val_samples += list(zip(batch["ids"], batch["texts"], hypotheses, strict=True))[: max(room, 0)]
        # every rank draws (a forward pass on rank zero alone would hang FSDP's all-gathers); rank zero logs
        if (self.log_cross_attention and self._cross_attention is None and not self.trainer.sanity_checking
                and plotting_available("the ASR cross-attention image")):
            self._cross_attention = self._cross_attention_image(batch)

    @torch.no_grad()
    def _cross_attention_image(self, batch: dict[str, Any]) -> tuple[str, np.ndarray]:
        """The batch's first utterance: the last decoder layer's cross-attention, averaged over heads, over its
        reference tokens `[tokens]` and the encoder positions of its audio (not of the padding after it)."""
        tokens, frame_mask = int(batch["decoder_attention_mask"][0].sum()), batch["attention_mask"][:1]
        weights = self.model.cross_attention_weights(batch["input_features"][:1], frame_mask,
                                                     batch["decoder_input_ids"][:1, :tokens])  # [1, H, tokens, S]
        positions = math.ceil(weights.shape[-1] * int(frame_mask.sum()) / frame_mask.shape[-1])
        return f"{batch['ids'][0]}_cross_attention", matrix_image(weights[0, :, :, :positions].mean(dim=0))

    def _log_scores(self, stage: str) -> None:
        """Corpus WER and CER from the edit counts of every rank (rates of shards would not average)."""
        totals = self._val_counts
        counts = torch.tensor([totals.words.errors, totals.words.reference_length, totals.chars.errors,
                               totals.chars.reference_length], dtype=torch.float64, device=self.device)
        counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        self.log(f"{stage}/wer", (counts[0] / counts[1].clamp(min=1)).float(), prog_bar=True)
        self.log(f"{stage}/cer", (counts[2] / counts[3].clamp(min=1)).float(), prog_bar=True)
        if self._val_samples and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            log_text_table(self.loggers, f"{stage}/predictions", ["id", "reference", "hypothesis"],
                           self._val_samples, self.global_step)
        if self._cross_attention is not None and self.trainer.is_global_zero:
            out_dir = Path(self.trainer.default_root_dir) / "samples" / f"step_{self.global_step:07d}"
            log_images(self.loggers, f"{stage}/images", [self._cross_attention], self.global_step, out_dir)

    # --- optimisation and checkpoints -----------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW-style optimiser (from the config) with no weight decay on biases and norms."""
        return warmup_optimizer(self.model, self.optimizer_factory, self.trainer.estimated_stepping_batches,
                                self.warmup_steps, self.lr_decay, self.min_lr_ratio)
