"""Scaled dot-product attention behind one function, so every model picks eager, SDPA or FlashAttention-2
by name and gets the same numbers (up to kernel rounding).

Mask convention, the same for every implementation: a **boolean** tensor broadcastable to
`[batch, heads, query_time, key_time]`, **True where the query may attend** (as in
`torch.nn.functional.scaled_dot_product_attention`). A `[batch, time]` padding mask (1 = real frame/token)
becomes one with `padding_to_attention_mask`. `is_causal` is applied on top of the mask, aligned to the
bottom right when there are more keys than queries (a KV cache): query `i` sees keys `<= i + keys - queries`.
Query rows that can see no key at all return zeros.
"""

from __future__ import annotations

import importlib.util
import warnings

import torch
import torch.nn.functional as F

IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")

_warned_fallbacks: set[str] = set()


def check_implementation(implementation: str) -> str:
    """Returns `implementation` unchanged, or raises a ValueError listing the valid names."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation={implementation!r} is unknown; use one of {IMPLEMENTATIONS}")
    return implementation


def padding_to_attention_mask(padding_mask: torch.Tensor) -> torch.Tensor:
    """`[batch, time]` padding mask (nonzero/True = real) -> boolean key mask `[batch, 1, 1, time]`."""
    if padding_mask.dim() != 2:
        raise ValueError(f"padding mask must be [batch, time], got shape {tuple(padding_mask.shape)}")
    return padding_mask.bool()[:, None, None, :]


def causal_mask(query_time: int, key_time: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean `[query_time, key_time]` lower-triangular mask aligned to the bottom right (KV-cache friendly)."""
    ones = torch.ones(query_time, key_time, dtype=torch.bool, device=device)
    return ones.tril(key_time - query_time)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
    implementation: str = "sdpa",
) -> torch.Tensor:
    """Attention of `q` over `k`/`v`.

    Args:
        q: `[batch, heads, query_time, head_dim]`.
        k, v: `[batch, heads, key_time, head_dim]`.
        mask: boolean, broadcastable to `[batch, heads, query_time, key_time]`, True = may attend.
        is_causal: add a (bottom-right aligned) causal mask.
        dropout_p: dropout on the attention weights; pass 0.0 at evaluation.
        scale: multiplier of `q @ k^T`; `head_dim ** -0.5` when None.
        implementation: "eager", "sdpa" or "flash_attention_2" (falls back to SDPA, warning once per reason,
            when flash_attn is missing, tensors are not CUDA fp16/bf16, or the mask is not a key-padding mask).

    Returns:
        `[batch, heads, query_time, head_dim]`.
    """
    check_implementation(implementation)
    query_time, key_time = q.shape[2], k.shape[2]
    is_causal = is_causal and query_time > 1  # one query (a cached decoding step) sees every key anyway
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"attention mask must be boolean (True = attend), got dtype {mask.dtype}")
    if implementation == "flash_attention_2":
        reason = _flash_unavailable_reason(q, mask)
        if reason is None:
            return _flash_attention(q, k, v, mask, is_causal, dropout_p, scale)
        if reason not in _warned_fallbacks:
            _warned_fallbacks.add(reason)
            warnings.warn(f"flash_attention_2 falls back to sdpa: {reason}", stacklevel=2)
        implementation = "sdpa"

    if implementation == "sdpa" and mask is None and (not is_causal or query_time == key_time):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
    if is_causal:
        causal = causal_mask(query_time, key_time, q.device)
        mask = causal if mask is None else mask & causal
    if implementation == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    return _eager_attention(q, k, v, mask, dropout_p, scale)


def attention_weights(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None,
                      scale: float | None = None) -> torch.Tensor:
    """The softmax weights `[B, H, Tq, Tk]` (float32, so that fp16/bf16 inputs do not overflow) of `q` over `k`,
    with `attend`'s shapes and boolean `mask`; a row with no visible key is zeros, as SDPA's."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-2, -1)).float() * scale  # [B, H, Tq, Tk]
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1)
    return weights if mask is None else weights.masked_fill(~mask, 0.0)


def _eager_attention(q, k, v, mask, dropout_p, scale) -> torch.Tensor:
    """Explicit matmul + softmax."""
    weights = attention_weights(q, k, mask, scale).to(q.dtype)
    return (F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights) @ v


def _flash_unavailable_reason(q: torch.Tensor, mask: torch.Tensor | None) -> str | None:
    if importlib.util.find_spec("flash_attn") is None:
        return "the flash_attn package is not installed (pip install flash-attn)"
    if q.device.type != "cuda":
        return f"tensors are on {q.device.type}, flash_attn needs CUDA"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"tensors are {q.dtype}, flash_attn needs float16 or bfloat16"
    if mask is not None and (mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2] != 1):
        return f"mask of shape {tuple(mask.shape)} is not a [batch, 1, 1, keys] key-padding mask"
    return None


def _unpad(x: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """`[B, H, T, D]` + `[B, T]` keep mask -> packed `[kept, H, D]`, flat indices, cu_seqlens, max length."""
    batch, heads, time, head_dim = x.shape
    indices = keep.flatten().nonzero().squeeze(1)
    packed = x.transpose(1, 2).reshape(batch * time, heads, head_dim)[indices]
    lengths = keep.sum(dim=1, dtype=torch.int32)
    cu_seqlens = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
    return packed, indices, cu_seqlens, int(lengths.max())


def _flash_attention(q, k, v, mask, is_causal, dropout_p, scale) -> torch.Tensor:
    """FlashAttention-2 on unpadded tokens. Padded keys are dropped; with `is_causal` and as many queries as
    keys (self-attention) the padded queries are dropped too and their outputs are zeros."""
    from flash_attn import flash_attn_varlen_func

    batch, heads, query_time, head_dim = q.shape
    key_time = k.shape[2]
    key_keep = (
        torch.ones(batch, key_time, dtype=torch.bool, device=q.device)
        if mask is None
        else mask.reshape(mask.shape[0], key_time).expand(batch, key_time)
    )
    query_keep = (
        key_keep
        if is_causal and query_time == key_time
        else torch.ones(batch, query_time, dtype=torch.bool, device=q.device)
    )
    q_packed, q_indices, cu_q, max_q = _unpad(q, query_keep)
    k_packed, _, cu_k, max_k = _unpad(k, key_keep)
    v_packed, _, _, _ = _unpad(v, key_keep)
    out = flash_attn_varlen_func(
        q_packed, k_packed, v_packed, cu_q, cu_k, max_q, max_k,
        dropout_p=dropout_p, softmax_scale=scale, causal=is_causal,
    )  # [kept, H, D]
    full = q.new_zeros(batch * query_time, heads, head_dim)
    full[q_indices] = out
    return full.view(batch, query_time, heads, head_dim).transpose(1, 2)
