"""Bark training: one LightningModule for the semantic, coarse and fine sub-models, full or with LoRA adapters.

The model's `config.model_type` picks the forward pass over the batches of `speechtrain.data.bark_data`:
semantic batches go through `embed_merged_context` (text and history embeddings summed, as generation does),
coarse batches straight through the causal model, fine batches through the fine model with one target codebook
per row. The loss is cross-entropy over the positions whose label is not -100 (next-token for the causal models,
the masked codebook for the fine model). Right padding under a causal mask is never seen by a real position, so
the causal models run without a padding mask (and keep SDPA's causal kernel).

LoRA (`lora={rank, alpha, targets, dropout}`) and the checkpoint contents are every task's
(`speechtrain.tasks.checkpointing.ExportableTask`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from speechtrain.layers.labels import IGNORE_INDEX
from speechtrain.models.bark import BarkCausalModel, BarkFineModel
from speechtrain.models.bark.layouts import DEFAULTS
from speechtrain.tasks.checkpointing import ExportableTask
from speechtrain.tasks.guards import GuardedTask
from speechtrain.tasks.optim import OptimizerFactory, warmup_optimizer


def semantic_logits(model: BarkCausalModel, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """`[B, T, output_vocab]` over the merged positions of a semantic batch."""
    context = DEFAULTS.semantic.max_input_semantic_length
    logits, _ = model(input_embeds=model.embed_merged_context(batch["input_ids"], context))
    return logits


def coarse_logits(model: BarkCausalModel, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    logits, _ = model(batch["input_ids"])
    return logits


def fine_logits(model: BarkFineModel, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return model(batch["codebook_idx"], batch["input_ids"])


FORWARDS = {"semantic": semantic_logits, "coarse_acoustics": coarse_logits, "fine_acoustics": fine_logits}


class BarkTask(ExportableTask, GuardedTask):
    """Trains one Bark sub-model on `bark_data` batches; logs `loss`, `accuracy` (of the scored tokens) and
    `tokens` (scored tokens, summed) under `train/` and `val/`."""

    summed_metrics = frozenset({"tokens"})
    feature_extractor = None  # token models: no audio front end to export

    def __init__(
        self,
        model: BarkCausalModel | BarkFineModel,
        optimizer: OptimizerFactory,
        warmup_steps: int = 0,
        lr_decay: str = "linear",
        min_lr_ratio: float = 0.0,
        lora: Mapping[str, Any] | None = None,
        max_consecutive_nonfinite: int = 10,
        tokenizer: Any = None,
    ) -> None:
        super().__init__(max_consecutive_nonfinite)
        self.forward_logits = FORWARDS[model.config.model_type]
        self.model = model
        self.optimizer_factory = optimizer
        self.warmup_steps, self.lr_decay, self.min_lr_ratio = warmup_steps, lr_decay, min_lr_ratio
        self.tokenizer = tokenizer  # the semantic model's text tokenizer, saved with its checkpoints and export
        self.add_lora(lora)

    # --- training -------------------------------------------------------------------------------

    def model_step(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cross-entropy, accuracy, number of scored tokens) of one batch."""
        logits = self.forward_logits(self.model, batch).float()  # [B, T, V], the loss in fp32
        labels = batch["labels"]
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
        scored = labels != IGNORE_INDEX
        tokens = scored.sum()
        accuracy = ((logits.argmax(dim=-1) == labels) & scored).sum() / tokens.clamp(min=1)
        return loss, accuracy, tokens

    def training_loss(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, accuracy, tokens = self.model_step(batch)
        return loss, {"accuracy": accuracy, "tokens": tokens.float()}

    def validation_step(self, batch: Mapping[str, Any] | None, batch_idx: int) -> None:
        if batch is None:
            return
        loss, accuracy, tokens = self.model_step(batch)
        batch_size = len(batch["ids"])
        self.log("val/loss", loss, prog_bar=True, batch_size=batch_size, sync_dist=True)
        self.log("val/accuracy", accuracy, batch_size=batch_size, sync_dist=True)
        self.log("val/tokens", tokens.float(), reduce_fx="sum", batch_size=batch_size, sync_dist=True)

    # --- optimisation and checkpoints -----------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        """The configured optimiser over the trainable parameters (the adapters only with LoRA), no weight decay on
        biases and norms; warm-up then decay per step."""
        return warmup_optimizer(self.model, self.optimizer_factory, self.trainer.estimated_stepping_batches,
                                self.warmup_steps, self.lr_decay, self.min_lr_ratio)
