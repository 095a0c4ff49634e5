"""SoundStorm (Borsos et al. 2023): a bidirectional Conformer that predicts residual-VQ codec tokens from
partially masked codes and semantic tokens, after lucidrains/soundstorm-pytorch.

Per frame the embeddings of its codes at every level are summed (one table of `num_quantizers *
(codebook_size + 1)` rows: each level has its own codes and its own mask id), the frame's semantic token
embedding is added, the Conformer runs over frames, and per-level heads give logits for every level of every
frame. The semantic sequence is resampled to the codec frame rate by nearest index: codec frame `t` reads
semantic frame `floor(t * semantic_rate / acoustic_rate)`, clamped to the sample's last semantic frame. (The
seed instead stretches the embedded sequence with bilinear interpolation to `ceil(S * acoustic / semantic)`
frames; with equal rates both are the identity.)
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from speechtrain.models.soundstorm.config import SoundStormConfig
from speechtrain.models.soundstorm.conformer import Conformer, ConformerBlock


def semantic_frame_indices(num_frames: int, semantic_lengths: torch.Tensor, semantic_rate: float,
                           acoustic_rate: float) -> torch.Tensor:
    """Semantic frame read by each codec frame: `floor(t * semantic_rate / acoustic_rate)`, at most the sample's
    last semantic frame. Long [B, num_frames]."""
    frames = torch.arange(num_frames, device=semantic_lengths.device, dtype=torch.float64)
    indices = torch.floor(frames * (semantic_rate / acoustic_rate)).long()  # [T]
    return torch.minimum(indices[None, :], (semantic_lengths[:, None] - 1).clamp(min=0))


class SoundStorm(nn.Module):
    """Codes (with mask ids) + semantic tokens -> logits of every level of every frame."""

    block_classes: ClassVar[tuple[type[nn.Module], ...]] = (ConformerBlock,)  # FSDP and activation-checkpointing units

    def __init__(self, config: SoundStormConfig) -> None:
        super().__init__()
        self.config = config
        levels, codes_per_level, dim = config.num_quantizers, config.codebook_size + 1, config.dim
        self.code_embeds = nn.Embedding(levels * codes_per_level, dim)
        self.register_buffer("quantizer_offsets", torch.arange(levels) * codes_per_level, persistent=False)
        self.semantic_token_emb = nn.Embedding(config.num_semantic_tokens, dim) if config.num_semantic_tokens else None
        if config.self_condition:
            self.null_embed = nn.Parameter(torch.randn(dim))
            self.to_self_cond = nn.Linear(dim, dim, bias=False)
        self.conformer = Conformer(
            dim, config.depth, config.heads, config.dim_head, config.ff_mult, config.conv_expansion_factor,
            config.conv_kernel_size, config.attn_dropout, config.ff_dropout, config.conv_dropout,
            config.attn_implementation,
        )
        self.heads = nn.Linear(dim, dim * levels)  # one dim-wide feature vector per level
        self.logits_norm = nn.LayerNorm(dim)
        self.logits_weight = nn.Parameter(torch.randn(levels, dim, config.codebook_size) * dim ** -0.5)
        self.logits_bias = nn.Parameter(torch.zeros(levels, config.codebook_size))

    @property
    def may_leave_parameters_unused(self) -> bool:
        """With self-conditioning, a step that conditions on a previous pass leaves `null_embed` without a gradient:
        plain DDP must look for unused parameters (read by `speechtrain.distributed.build_strategy`)."""
        return self.config.self_condition

    def embed_semantic(self, semantic_ids: torch.Tensor, semantic_mask: torch.Tensor | None,
                       num_frames: int) -> torch.Tensor:
        """Semantic embeddings at the codec frame rate [B, num_frames, D]; padded semantic frames embed to 0."""
        if semantic_mask is None:
            semantic_mask = torch.ones_like(semantic_ids, dtype=torch.bool)
        semantic_mask = semantic_mask.bool()
        embeddings = self.semantic_token_emb(semantic_ids.masked_fill(~semantic_mask, 0))
        embeddings = embeddings * semantic_mask[..., None]  # [B, S, D]
        indices = semantic_frame_indices(num_frames, semantic_mask.sum(dim=1), self.config.semantic_rate,
                                         self.config.acoustic_rate)
        return embeddings.gather(1, indices[..., None].expand(-1, -1, embeddings.shape[-1]))  # [B, T, D]

    def forward(
        self,
        codes: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        semantic_ids: torch.Tensor | None = None,
        semantic_mask: torch.Tensor | None = None,
        self_condition: torch.Tensor | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits of every code.

        Args:
            codes: Long [B, T, Q], ids in `0..codebook_size` (`codebook_size` = masked).
            frame_mask: Bool [B, T], True on real frames; None = all real.
            semantic_ids: Long [B, S] (needed iff `num_semantic_tokens > 0`); semantic_mask: Bool [B, S].
            self_condition: hidden states [B, T, D] of a previous pass (self-conditioning models only; None = the
                learned null embedding).
            return_hidden: also return the Conformer output, the next pass's `self_condition`.

        Returns:
            logits [B, T, Q, codebook_size] (and hidden [B, T, D]).
        """
        levels = self.config.num_quantizers
        if codes.dim() != 3 or codes.shape[-1] != levels:
            raise ValueError(f"codes must be [batch, frames, {levels}] (num_quantizers), got {tuple(codes.shape)}")
        if (semantic_ids is None) != (self.semantic_token_emb is None):
            raise ValueError("semantic_ids must be given exactly when the model is conditional "
                             f"(num_semantic_tokens={self.config.num_semantic_tokens})")
        x = self.code_embeds(codes + self.quantizer_offsets).sum(dim=2)  # [B, T, Q, D] -> [B, T, D]
        if semantic_ids is not None:
            x = x + self.embed_semantic(semantic_ids, semantic_mask, codes.shape[1])
        if self.config.self_condition:
            x = x + self.to_self_cond(self.null_embed if self_condition is None else self_condition)
        hidden = self.conformer(x, None if frame_mask is None else frame_mask.bool())
        per_level = self.heads(hidden).unflatten(-1, (levels, -1))  # [B, T, Q * D] -> [B, T, Q, D]
        logits = torch.einsum("btqd,qdk->btqk", self.logits_norm(per_level), self.logits_weight) + self.logits_bias
        return (logits, hidden) if return_hidden else logits
