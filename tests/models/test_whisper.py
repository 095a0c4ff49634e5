import json
import warnings

import pytest
import torch

from speechtrain.models.whisper import (
    WhisperConfig,
    WhisperForConditionalGeneration,
    build_whisper,
    load_pretrained,
    model_from_hf_config,
    save_pretrained,
)
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


def ours_from(hf, attn_implementation="sdpa"):
    model = WhisperForConditionalGeneration(WhisperConfig.from_hf_dict(hf.config.to_dict()), attn_implementation)
    model.load_state_dict(hf.state_dict(), strict=True)
    return model.eval()


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


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_kv_cache_decode_equals_full_forward(attn_implementation):
    ours = ours_from(hf_model(attn_implementation), attn_implementation)
    features, ids, _ = batch()
    with torch.no_grad():
        full = ours(features, None, ids)
        encoded = ours.encode(features)
        logits, cache = ours.decode(ids[:, :3], encoded)
        steps = [logits]
        for position in range(3, ids.shape[1]):
            logits, cache = ours.decode(ids[:, position : position + 1], encoded, cache=cache)
            steps.append(logits)
    assert len(cache) == 2 and cache[0][0].shape == (2, 4, 7, 16) and cache[0][2].shape == (2, 4, 50, 16)
    diff = (torch.cat(steps, dim=1) - full).abs().max().item()
    print(f"{attn_implementation}: cached vs full logits max abs diff {diff:.2e}")
    assert diff < 1e-4


def test_flash_attention_falls_back_on_cpu():
    hf = hf_model()
    features, ids, mask = batch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flash = ours_from(hf, "flash_attention_2")
        with torch.no_grad():
            torch.testing.assert_close(flash(features, None, ids, mask), ours_from(hf)(features, None, ids, mask))


def test_wrong_input_length_and_long_decoding_raise():
    ours = ours_from(hf_model())
    with pytest.raises(ValueError, match=r"\[batch, 16, 100\]"):
        ours.encode(torch.randn(1, 16, 80))
    with pytest.raises(ValueError, match="max_target_positions=40"):
        ours(torch.randn(1, 16, 100), None, torch.ones(1, 41, dtype=torch.long))
    with pytest.raises(ValueError, match="attn_implementation"):
        WhisperForConditionalGeneration(WhisperConfig(**TINY), attn_implementation="fast")


def test_config_checks_and_round_trip():
    with pytest.raises(ValueError, match="divisible by encoder_attention_heads"):
        WhisperConfig(**{**TINY, "encoder_attention_heads": 5})
    with pytest.raises(ValueError, match="pad_token_id=100"):
        WhisperConfig(**{**TINY, "pad_token_id": 100})
    with pytest.raises(ValueError, match="activation_function"):
        WhisperConfig(**{**TINY, "activation_function": "mish"})
    config = WhisperConfig.from_hf_dict({**TINY, "dropout": 0.1, "torch_dtype": "float32", "use_cache": True})
    assert config.dropout == 0.1
    hf_config = transformers.WhisperConfig(**config.to_hf_dict())
    assert WhisperConfig.from_hf_dict(hf_config.to_dict()) == config
    with pytest.raises(ValueError, match="model_type"):
        WhisperConfig.from_hf_dict({"model_type": "bart"})


def test_our_export_loads_in_transformers(tmp_path):
    ours = ours_from(hf_model())
    save_pretrained(ours, tmp_path)
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as handle:
        assert "proj_out.weight" not in handle.keys()
    hf = transformers.WhisperForConditionalGeneration.from_pretrained(tmp_path).eval()
    features, ids, mask = batch()
    with torch.no_grad():
        diff = (hf(input_features=features, decoder_input_ids=ids).logits - ours(features, None, ids)).abs().max()
    print(f"ours -> transformers logits max abs diff {diff.item():.2e}")
    assert diff < 1e-4


@pytest.mark.parametrize("safe_serialization", [True, False])
def test_transformers_export_loads_in_ours(tmp_path, safe_serialization):
    hf = hf_model()
    if safe_serialization:
        hf.save_pretrained(tmp_path)
    else:  # an older checkpoint layout: pytorch_model.bin holding the tied weight too
        hf.config.save_pretrained(tmp_path)
        torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    ours = load_pretrained(tmp_path, attn_implementation="eager").eval()
    assert ours.proj_out.weight is ours.model.decoder.embed_tokens.weight
    assert not ours.model.encoder.embed_positions.weight.requires_grad
    features, ids, _ = batch()
    with torch.no_grad():
        diff = (hf(input_features=features, decoder_input_ids=ids).logits - ours(features, None, ids)).abs().max()
    print(f"transformers -> ours logits max abs diff {diff.item():.2e}")
    assert diff < 1e-4


def test_load_pretrained_reports_missing_and_mismatched_weights(tmp_path):
    from safetensors.torch import load_file, save_file

    save_pretrained(WhisperForConditionalGeneration(WhisperConfig(**TINY)), tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["model.decoder.layers.1.fc2.bias"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing keys \['model.decoder.layers.1.fc2.bias'\]"):
        load_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "decoder_ffn_dim": 64}))
    with pytest.raises(ValueError, match="shape mismatches"):
        load_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path / "nowhere")


def test_build_whisper_from_scratch_and_pretrained(tmp_path):
    tokenizer = train_whisper_tokenizer(["a small corpus of words", "more words here"], vocab_size=300)
    sizes = ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads",
             "num_mel_bins", "max_source_positions")
    model = build_whisper(tokenizer, {name: TINY[name] for name in sizes})
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.decoder_start_token_id == tokenizer.prefix_ids[0]
    assert model.config.eos_token_id == tokenizer.eos_id and model.config.pad_token_id == tokenizer.pad_id
    with pytest.raises(ValueError, match="unknown WhisperConfig keys"):
        build_whisper(tokenizer, {"hidden_size": 64})
    save_pretrained(model, tmp_path)
    loaded = build_whisper(tokenizer, {"dropout": 0.2}, pretrained=str(tmp_path))
    assert loaded.config.dropout == 0.2
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())
    bigger = train_whisper_tokenizer([" ".join(f"w{i}" for i in range(300))], vocab_size=400)
    with pytest.raises(ValueError, match="tokenizer has"):
        build_whisper(bigger, pretrained=str(tmp_path))
