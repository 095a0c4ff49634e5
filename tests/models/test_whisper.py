"""Whisper against transformers: logits, state-dict names, padding, input checks and building from a tokenizer.

The checks it shares with Speech2Text (cached decoding, Hub folders, config round trip) are in
test_seq2seq_families.py.
"""

from functools import partial

import pytest
import torch
from transformers_parity import ours_from_transformers

from speechtrain.models.whisper import WhisperConfig, build_whisper, model_from_hf_config, save_pretrained
from speechtrain.models.whisper.tokenizer import train_whisper_tokenizer

transformers = pytest.importorskip("transformers")

TINY = dict(
    vocab_size=100, num_mel_bins=16, d_model=64, encoder_layers=2, decoder_layers=2,
    encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
    max_source_positions=50, max_target_positions=40, pad_token_id=0, bos_token_id=1, eos_token_id=1,
    decoder_start_token_id=2, suppress_tokens=None, begin_suppress_tokens=None,
    init_std=0.2,  # 10x transformers' default, so the random logits spread (std ~1.5) and the checks bite
)


def hf_model(attn_implementation="sdpa", seed=0, **overrides):
    torch.manual_seed(seed)
    config = transformers.WhisperConfig(**{**TINY, **overrides})
    return transformers.WhisperForConditionalGeneration._from_config(
        config, attn_implementation=attn_implementation
    ).eval()


ours_from = partial(ours_from_transformers, model_from_hf_config)  # ours_from(hf, attn_implementation="sdpa")


def batch(seed=1):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 16, 100, generator=generator)
    ids = torch.randint(3, 100, (2, 7), generator=generator)
    ids[:, 0] = 2
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0  # right-padded second row
    return features, ids, mask


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_encoder_states_and_logits_match_transformers(attn_implementation):
    hf = hf_model(attn_implementation)
    ours = ours_from(hf, attn_implementation)
    features, ids, mask = batch()
    with torch.no_grad():
        expected = hf(input_features=features, decoder_input_ids=ids, decoder_attention_mask=mask)
        encoded = ours.encode(features)
        logits = ours(features, None, ids, mask)
    encoder_diff = (encoded - expected.encoder_last_hidden_state).abs().max().item()
    logits_diff = (logits - expected.logits).abs().max().item()
    print(f"{attn_implementation}: encoder max abs diff {encoder_diff:.2e}, logits max abs diff {logits_diff:.2e}")
    assert logits.shape == (2, 7, 100)
    assert encoder_diff < 1e-4 and logits_diff < 1e-4


def test_state_dict_keys_equal_transformers():
    hf = hf_model()
    ours = model_from_hf_config(hf.config.to_dict())
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in hf.state_dict().items()}
    assert ours.proj_out.weight is ours.model.decoder.embed_tokens.weight
    assert not ours.model.encoder.embed_positions.weight.requires_grad
    assert ours.get_encoder() is ours.model.encoder


def test_padding_only_changes_padded_rows():
    ours = ours_from(hf_model())
    features, ids, mask = batch()
    with torch.no_grad():
        padded = ours(features, None, ids, mask)
        alone = ours(features[1:], None, ids[1:, :4])
    torch.testing.assert_close(padded[1, :4], alone[0], atol=1e-5, rtol=1e-5)


def test_wrong_input_length_and_long_decoding_raise():
    ours = ours_from(hf_model())
    with pytest.raises(ValueError, match=r"\[batch, 16, 100\]"):
        ours.encode(torch.randn(1, 16, 80))
    with pytest.raises(ValueError, match="max_target_positions=40"):
        ours(torch.randn(1, 16, 100), None, torch.ones(1, 41, dtype=torch.long))
    with pytest.raises(ValueError, match="attn_implementation"):
        WhisperConfig(**TINY, attn_implementation="fast")


@pytest.mark.parametrize(("change", "message"), [
    ({"encoder_attention_heads": 5}, "divisible by encoder_attention_heads"),
    ({"pad_token_id": 100}, "pad_token_id=100"),
    ({"activation_function": "mish"}, "activation_function"),
])
def test_config_checks(change, message):
    with pytest.raises(ValueError, match=message):
        WhisperConfig(**{**TINY, **change})


def test_config_from_a_transformers_dict_ignores_other_keys():
    config = WhisperConfig.from_hf_dict({**TINY, "dropout": 0.1, "torch_dtype": "float32", "use_cache": True})
    assert config.dropout == 0.1


def test_build_whisper_from_scratch_and_pretrained(tmp_path):
    tokenizer = train_whisper_tokenizer(["a small corpus of words", "more words here"], vocab_size=300)
    sizes = ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads",
             "num_mel_bins", "max_source_positions")
    model = build_whisper({name: TINY[name] for name in sizes}, tokenizer=tokenizer)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.decoder_start_token_id == tokenizer.prefix_ids[0]
    assert model.config.eos_token_id == tokenizer.eos_id and model.config.pad_token_id == tokenizer.pad_id
    with pytest.raises(ValueError, match="unknown WhisperConfig keys"):
        build_whisper({"hidden_size": 64}, tokenizer=tokenizer)
    save_pretrained(model, tmp_path)
    loaded = build_whisper(pretrained=str(tmp_path), overrides={"dropout": 0.2}, tokenizer=tokenizer)
    assert loaded.config.dropout == 0.2
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())
    bigger = train_whisper_tokenizer([" ".join(f"w{i}" for i in range(300))], vocab_size=400)
    with pytest.raises(ValueError, match="tokenizer has"):
        build_whisper(pretrained=str(tmp_path), tokenizer=bigger)
