"""SoundStorm training: masked cross-entropy on codec tokens corrupted as the paper (`SoundStormMasking`).

Batches (from the codec-token collator): `codes` Long [B, T, Q] (padding 0), `frame_mask` Bool [B, T],
`semantic_ids` Long [B, S], `semantic_mask` Bool [B, S], `ids`, `texts`. Validation corrupts each batch with a
generator seeded from `validation_seed` and the batch index, so `val/loss` compares across epochs. Every
`sample_every_n_epochs` epochs the first validation item is generated from its semantic tokens and a prompt
of its first `prompt_seconds` (at most half of it); with a `codec` (`decode(codes [1, T, Q]) -> waveform`,
`sample_rate`) the generated and the reference audio are logged. The codec is not part of the checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from speechtrain.distributed import agreed_with_rank_zero, is_fully_sharded, root_gathered
from speechtrain.layers.labels import IGNORE_INDEX
from speechtrain.models.soundstorm import SoundStorm, SoundStormMasking, generate
from speechtrain.plots import plotting_available
from speechtrain.tasks.checkpointing import ExportableTask
from speechtrain.tasks.guards import GuardedTask
from speechtrain.tasks.optim import OptimizerFactory, warmup_optimizer
from speechtrain.tasks.sample_logging import log_audio, log_images, mel_images


class SoundStormTask(ExportableTask, GuardedTask):
    """Trains a `SoundStorm` on codec-token batches; self-conditions when the model has the parameters for it."""

    tokenizer = feature_extractor = None  # codec tokens in, codec tokens out: the export has neither

    def __init__(
        self,
        model: SoundStorm,
        optimizer: OptimizerFactory,
        warmup_steps: int = 0,
        lr_decay: str = "linear",
        min_lr_ratio: float = 0.0,
        schedule: str = "cosine",
        no_replace_prob: float = 0.15,
        random_token_prob: float = 0.1,
        self_condition_prob: float = 0.75,
        validation_seed: int = 1234,
        sample_every_n_epochs: int = 1,
        sample_steps: Sequence[int] = (16, 1),
        prompt_seconds: float = 3.0,
        codec: Any = None,
        max_consecutive_nonfinite: int = 10,
        lora: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(max_consecutive_nonfinite)
        config = model.config
        self.model = model
        self.add_lora(lora)
        self.optimizer_factory = optimizer
        self.warmup_steps, self.lr_decay, self.min_lr_ratio = warmup_steps, lr_decay, min_lr_ratio
        self.masking = SoundStormMasking(config.codebook_size, config.num_quantizers, schedule, no_replace_prob,
                                         random_token_prob)
        self.schedule = schedule
        self.self_condition_prob = self_condition_prob
        self.validation_seed = validation_seed
        self.sample_every_n_epochs = sample_every_n_epochs
        self.sample_steps = tuple(sample_steps)
        self.prompt_seconds = prompt_seconds
        self.__dict__["codec"] = codec  # not a submodule: kept out of the state dict and the checkpoint
        self._sample_item: dict[str, torch.Tensor] | None = None

    # --- training -------------------------------------------------------------------------------

    def model_step(self, batch: dict[str, Any], generator: torch.Generator | None = None,
                   choices: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(cross-entropy, accuracy) over the scored positions of the drawn level. Tensors are drawn from `generator`
        (on the batch's device), the step's decisions (level, corruption coins, self-conditioning) from the CPU
        generator `choices` (the global ones when None), so that the step never waits for the device."""
        frame_mask = batch["frame_mask"].bool()
        masked = self.masking(batch["codes"], frame_mask, generator, choices=choices)
        conditional = self.model.semantic_token_emb is not None
        semantic = (batch["semantic_ids"], batch.get("semantic_mask")) if conditional else (None, None)
        self_condition = None
        conditioning = False
        if self.model.config.self_condition:
            conditioning = float(torch.rand((), generator=choices)) < self.self_condition_prob
            if is_fully_sharded(self):  # the extra pass gathers parameters collectively: all ranks take it or none
                conditioning = agreed_with_rank_zero(conditioning, batch["codes"].device)
        if conditioning:
            with torch.no_grad():
                _, self_condition = self.model(masked.inputs, frame_mask, *semantic, return_hidden=True)
        logits = self.model(masked.inputs, frame_mask, *semantic, self_condition=self_condition)
        logits = logits[:, :, masked.level].float()  # [B, T, K]; the loss in fp32 under mixed precision
        loss = F.cross_entropy(logits.flatten(0, 1), masked.labels.flatten(), ignore_index=IGNORE_INDEX)
        scored = masked.labels != IGNORE_INDEX
        accuracy = ((logits.argmax(-1) == masked.labels) & scored).sum() / scored.sum()  # no boolean indexing: no sync
        return loss, accuracy

    def training_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, accuracy = self.model_step(batch)
        return loss, {"accuracy": accuracy}

    # --- validation -----------------------------------------------------------------------------

    def validation_step(self, batch: dict[str, Any] | None, batch_idx: int) -> None:
        if batch is None:
            return
        seed = self.validation_seed + batch_idx
        generator, choices = torch.Generator(device=self.device).manual_seed(seed), torch.Generator().manual_seed(seed)
        loss, accuracy = self.model_step(batch, generator, choices)
        batch_size = len(batch["ids"])
        self.log("val/loss", loss, prog_bar=True, batch_size=batch_size, sync_dist=True)
        self.log("val/accuracy", accuracy, batch_size=batch_size, sync_dist=True)
        if batch_idx == 0:
            frames = int(batch["frame_mask"][0].sum())
            semantic_ids = batch.get("semantic_ids")
            if semantic_ids is not None:
                semantic_ids = semantic_ids[0, : int(batch["semantic_mask"][0].sum())]
            self._sample_item = {"id": batch["ids"][0], "codes": batch["codes"][0, :frames],
                                 "semantic_ids": semantic_ids}

    def on_validation_epoch_end(self) -> None:
        due = (self.current_epoch + 1) % max(self.sample_every_n_epochs, 1) == 0
        if not due or self._sample_item is None or self.trainer.sanity_checking:
            return
        item = self._sample_item
        # Under FSDP every rank generates from its own item (the same number of passes: the schedule fixes them),
        # since each pass gathers parameters collectively; rank zero logs.
        with root_gathered(self):
            generated = self.sample(item["codes"], item["semantic_ids"])
        if not self.trainer.is_global_zero:
            return
        self.log("val/sample_level0_match", (generated[:, 0] == item["codes"][:, 0]).float().mean(),
                 rank_zero_only=True)
        if self.codec is None:
            return
        clips = [(f"{item['id']}_generated", self.decode(generated)), (f"{item['id']}_reference",
                                                                       self.decode(item["codes"]))]
        out_dir = Path(self.trainer.default_root_dir) / "samples" / f"step_{self.global_step:07d}"
        log_audio(self.loggers, "val/samples", clips, self.codec.sample_rate, self.global_step, out_dir)
        if plotting_available("SoundStorm's mel images"):  # of the clips above, on one colour scale
            log_images(self.loggers, "val/images", mel_images(clips, self.codec.sample_rate), self.global_step, out_dir)

    @torch.no_grad()
    def sample(self, codes: torch.Tensor, semantic_ids: torch.Tensor | None, seed: int | None = None
               ) -> torch.Tensor:
        """Codes [T, Q] for one item from its semantic tokens [S] and a prompt of its first frames (up to
        `prompt_seconds`, at most half of the item)."""
        config = self.model.config
        frames = codes.shape[0]
        prompt_frames = min(int(self.prompt_seconds * config.acoustic_rate), frames // 2)
        generator = torch.Generator(device=self.device).manual_seed(self.validation_seed if seed is None else seed)
        generated = generate(
            self.model, frames, semantic_ids=None if self.model.semantic_token_emb is None else semantic_ids[None],
            prompt=codes[None, :prompt_frames], steps=self.sample_steps, schedule=self.schedule, generator=generator,
        )
        return generated[0]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """A 1-D waveform of codes [T, Q] through the codec."""
        device = getattr(self.codec, "device", None)
        if device is None and isinstance(self.codec, torch.nn.Module):
            device = next(self.codec.parameters(), torch.empty(0)).device
        return self.codec.decode(codes[None].to(device or codes.device)).reshape(-1)

    # --- optimisation and checkpoints -----------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW-style optimiser (from the config) with no weight decay on biases, norms and embeddings'
        vectors (parameters of fewer than 2 dimensions)."""
        return warmup_optimizer(self.model, self.optimizer_factory, self.trainer.estimated_stepping_batches,
                                self.warmup_steps, self.lr_decay, self.min_lr_ratio)
