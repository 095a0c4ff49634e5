import warnings

import pytest
import torch

from speechtrain.layers import attention
from speechtrain.layers.attention import attend, causal_mask, padding_to_attention_mask


def _qkv(batch=2, heads=4, query_time=6, key_time=6, head_dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, query_time, head_dim, generator=generator)
    k = torch.randn(batch, heads, key_time, head_dim, generator=generator)
    v = torch.randn(batch, heads, key_time, head_dim, generator=generator)
    return q, k, v


def _reference(q, k, v, allowed):
    """Plain softmax attention over the allowed keys, in float64."""
    scores = (q.double() @ k.double().transpose(-2, -1)) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~allowed, float("-inf"))
    return (scores.softmax(-1) @ v.double()).float()


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("key_time", [6, 9])
def test_eager_equals_sdpa_and_reference_with_padding(is_causal, key_time):
    q, k, v = _qkv(key_time=key_time)
    padding = torch.ones(2, key_time, dtype=torch.long)
    padding[1, -2:] = 0
    mask = padding_to_attention_mask(padding)
    eager = attend(q, k, v, mask=mask, is_causal=is_causal, implementation="eager")
    sdpa = attend(q, k, v, mask=mask, is_causal=is_causal, implementation="sdpa")
    allowed = mask & causal_mask(6, key_time) if is_causal else mask.expand(2, 4, 6, key_time)
    diff = (eager - sdpa).abs().max().item()
    print(f"eager vs sdpa max abs diff {diff:.2e}")
    assert diff < 1e-5
    torch.testing.assert_close(eager, _reference(q, k, v, allowed), atol=1e-5, rtol=1e-5)


def test_causal_without_mask_matches_reference():
    q, k, v = _qkv()
    for implementation in ("eager", "sdpa"):
        out = attend(q, k, v, is_causal=True, implementation=implementation)
        torch.testing.assert_close(out, _reference(q, k, v, causal_mask(6, 6)), atol=1e-5, rtol=1e-5)


def test_causal_mask_is_bottom_right_aligned_for_a_cache():
    # two new queries after four cached keys: query 0 sees keys 0..4, query 1 sees all six
    expected = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(causal_mask(2, 6), expected)
    q, k, v = _qkv(query_time=6)
    full = attend(q, k, v, is_causal=True)
    last_two = attend(q[:, :, 4:], k, v, is_causal=True, implementation="eager")
    torch.testing.assert_close(last_two, full[:, :, 4:], atol=1e-5, rtol=1e-5)


def test_fully_masked_rows_are_zero_in_every_implementation():
    q, k, v = _qkv()
    mask = torch.zeros(2, 1, 1, 6, dtype=torch.bool)
    mask[0] = True
    for implementation in ("eager", "sdpa"):
        out = attend(q, k, v, mask=mask, implementation=implementation)
        assert torch.equal(out[1], torch.zeros_like(out[1]))
        assert out[0].abs().sum() > 0


def test_bad_arguments_raise():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="attn_implementation"):
        attend(q, k, v, implementation="flash3")
    with pytest.raises(TypeError, match="boolean"):
        attend(q, k, v, mask=torch.zeros(2, 1, 1, 6))
    with pytest.raises(ValueError, match=r"\[batch, time\]"):
        padding_to_attention_mask(torch.ones(2, 1, 6))


def test_flash_falls_back_to_sdpa_with_one_warning(monkeypatch):
    monkeypatch.setattr(attention, "_warned_fallbacks", set())
    q, k, v = _qkv()
    mask = padding_to_attention_mask(torch.tensor([[1] * 6, [1] * 4 + [0] * 2]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = attend(q, k, v, mask=mask, is_causal=True, implementation="flash_attention_2")
        attend(q, k, v, mask=mask, is_causal=True, implementation="flash_attention_2")
    messages = [str(w.message) for w in caught if "flash_attention_2" in str(w.message)]
    assert len(messages) == 1, messages
    assert "falls back to sdpa" in messages[0]
    torch.testing.assert_close(first, attend(q, k, v, mask=mask, is_causal=True), atol=0, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("implementation", ["sdpa", "flash_attention_2"])
def test_cuda_half_precision_matches_eager(implementation):
    q, k, v = (t.cuda().half() for t in _qkv())
    padding = torch.tensor([[1] * 6, [1] * 4 + [0] * 2], device="cuda")
    mask = padding_to_attention_mask(padding)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = attend(q, k, v, mask=mask, is_causal=True, implementation=implementation)
    eager = attend(q, k, v, mask=mask, is_causal=True, implementation="eager")
    real = padding.bool()[:, None, :, None]  # flash leaves padded query rows at zero
    torch.testing.assert_close(out * real, eager * real, atol=2e-3, rtol=2e-3)


def test_flash_path_unpads_and_repads(monkeypatch):
    """The FlashAttention-2 wrapper's packing, with a stand-in kernel (per-sequence eager attention, causal
    aligned to the bottom right as flash_attn's) since flash_attn needs CUDA."""
    import sys
    import types

    def varlen_reference(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None, causal=False):
        outputs = []
        for start_q, end_q, start_k, end_k in zip(cu_q[:-1], cu_q[1:], cu_k[:-1], cu_k[1:], strict=True):
            q_i, k_i, v_i = (t.transpose(0, 1)[None] for t in (q[start_q:end_q], k[start_k:end_k], v[start_k:end_k]))
            out = attend(q_i, k_i, v_i, is_causal=causal, scale=softmax_scale, implementation="eager")
            outputs.append(out[0].transpose(0, 1))
        return torch.cat(outputs)

    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_varlen_func=varlen_reference))
    monkeypatch.setattr(attention, "_flash_unavailable_reason", lambda q, mask: None)
    padding = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    mask = padding_to_attention_mask(padding)
    real_queries = padding.bool()[:, None, :, None]

    q, k, v = _qkv()
    flash = attend(q, k, v, mask=mask, is_causal=True, implementation="flash_attention_2")
    sdpa = attend(q, k, v, mask=mask, is_causal=True)
    torch.testing.assert_close(flash * real_queries, sdpa * real_queries, atol=1e-5, rtol=1e-5)
    assert torch.equal(flash[1, :, 4:], torch.zeros_like(flash[1, :, 4:]))  # padded queries stay zero

    q, k, v = _qkv(query_time=3)  # cross-attention: every query kept, padded keys dropped
    torch.testing.assert_close(attend(q, k, v, mask=mask, implementation="flash_attention_2"),
                               attend(q, k, v, mask=mask), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attend(q, k, v, implementation="flash_attention_2"), attend(q, k, v),
                               atol=1e-5, rtol=1e-5)
