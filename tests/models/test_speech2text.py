import json
import warnings

import pytest
import torch

from speechtrain.decoding import beam_search, greedy_decode
from speechtrain.models.speech2text import (
    Speech2TextConfig,
    Speech2TextForConditionalGeneration,
    build_speech2text,
    load_pretrained,
    model_from_hf_config,
    save_pretrained,
)

transformers = pytest.importorskip("transformers")

TINY = dict(
    vocab_size=100, input_feat_per_channel=16, conv_channels=64, d_model=64, encoder_layers=2, decoder_layers=2,
    encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
    # fewer positions than the batch below needs: both implementations must grow their sinusoid tables
    max_source_positions=8, max_target_positions=5,
    dropout=0.0, init_std=0.2,  # 10x transformers' default, so the random logits spread (std ~1.7)
)
LENGTHS = (50, 30, 11)  # frames per utterance of the padded batch


def hf_model(seed=0, **overrides):
    torch.manual_seed(seed)
    config = transformers.Speech2TextConfig(**{**TINY, **overrides})
    return transformers.Speech2TextForConditionalGeneration(config).eval()


def ours_from(hf, attn_implementation="sdpa"):
    model = Speech2TextForConditionalGeneration(Speech2TextConfig.from_hf_dict(hf.config.to_dict()),
                                                attn_implementation)
    model.load_state_dict(hf.state_dict(), strict=True)
    return model.eval()


def batch(seed=1):
    """Frames-first features zero-padded as the feature extractor pads them, and right-padded decoder ids."""
    generator = torch.Generator().manual_seed(seed)
    frame_mask = torch.arange(max(LENGTHS))[None, :] < torch.tensor(LENGTHS)[:, None]  # [3, 50]
    features = torch.randn(3, max(LENGTHS), 16, generator=generator) * frame_mask[..., None]
    ids = torch.randint(4, 100, (3, 7), generator=generator)
    ids[:, 0] = 2  # </s>, the decoder start token
    decoder_mask = torch.ones(3, 7, dtype=torch.bool)
    decoder_mask[1, 4:] = False
    ids[1, 4:] = 1  # <pad>, as the collator pads
    return features, frame_mask, ids, decoder_mask


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_encoder_states_and_logits_match_transformers(attn_implementation):
    hf = hf_model()  # transformers' Speech2Text runs eager attention only
    ours = ours_from(hf, attn_implementation)
    features, frame_mask, ids, decoder_mask = batch()
    with torch.no_grad():
        expected = hf(input_features=features, attention_mask=frame_mask.long(), decoder_input_ids=ids,
                      decoder_attention_mask=decoder_mask.long())
        encoded = ours.encode(features, frame_mask)
        logits = ours(features, frame_mask, ids, decoder_mask)
    encoder_diff = (encoded - expected.encoder_last_hidden_state).abs().max().item()
    logits_diff = (logits - expected.logits).abs().max().item()
    print(f"{attn_implementation}: encoder max abs diff {encoder_diff:.2e}, logits max abs diff {logits_diff:.2e}")
    assert encoded.shape == (3, 13, 64) and logits.shape == (3, 7, 100)
    assert expected.logits.std() > 1.0
    assert encoder_diff < 1e-4 and logits_diff < 1e-4
    assert ours.model.decoder.embed_positions.weights.shape[0] == 5 + 2  # the larger table was not kept


def test_flash_attention_falls_back_on_cpu():
    hf = hf_model()
    features, frame_mask, ids, decoder_mask = batch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flash = ours_from(hf, "flash_attention_2")
        with torch.no_grad():
            torch.testing.assert_close(flash(features, frame_mask, ids, decoder_mask),
                                       ours_from(hf)(features, frame_mask, ids, decoder_mask))


def test_frame_mask_is_subsampled_like_transformers():
    hf, ours = hf_model(), ours_from(hf_model())
    _, frame_mask, _, _ = batch()
    expected = hf.model._get_feature_vector_attention_mask(13, frame_mask.long())
    assert ours.encoder_mask(frame_mask).long().tolist() == expected.tolist()
    assert ours.encoder_mask(frame_mask).sum(dim=1).tolist() == [13, 8, 3]


def test_without_frame_mask_equals_transformers_and_a_full_mask():
    hf = hf_model()
    ours = ours_from(hf)
    features, frame_mask, ids, _ = batch()
    with torch.no_grad():
        expected = hf(input_features=features, decoder_input_ids=ids).logits
        unmasked = ours(features, None, ids)
        full = ours(features, torch.ones_like(frame_mask), ids)
    assert (unmasked - expected).abs().max() < 1e-4
    torch.testing.assert_close(unmasked, full)


def test_greedy_decoding_equals_transformers_generate():
    """Our shared greedy search on our model against transformers' `generate` (greedy) on theirs. Untied
    embeddings and this seed give varied tokens, and one utterance that ends at once."""
    hf = hf_model(seed=3, max_target_positions=40, tie_word_embeddings=False)
    ours = ours_from(hf)
    features, frame_mask, _, _ = batch()
    with torch.no_grad():
        expected = hf.generate(input_features=features, attention_mask=frame_mask.long(), num_beams=1,
                               do_sample=False, max_new_tokens=12, min_length=0)
    actual = greedy_decode(ours, features, frame_mask, prefix_ids=[2], eos_id=2, max_new_tokens=12)
    for row, sequence in zip(expected.tolist(), actual):
        end = row.index(2, 1) + 1 if 2 in row[1:] else len(row)  # transformers pads finished rows
        assert sequence == row[:end]
    assert len({tuple(sequence) for sequence in actual}) == 3
    assert sorted(len(sequence) for sequence in actual) == [2, 13, 13]  # [</s>, </s>] and two cut at 12 tokens


def test_beam_search_equals_transformers_generate():
    hf = hf_model(seed=3, max_target_positions=40, tie_word_embeddings=False)
    ours = ours_from(hf)
    features, frame_mask, _, _ = batch()
    with torch.no_grad():
        expected = hf.generate(input_features=features, attention_mask=frame_mask.long(), num_beams=3,
                               do_sample=False, max_new_tokens=10, min_length=0, length_penalty=1.0,
                               early_stopping=False)
    actual = beam_search(ours, features, frame_mask, prefix_ids=[2], eos_id=2, max_new_tokens=10, num_beams=3)
    for row, sequence in zip(expected.tolist(), actual):
        end = row.index(2, 1) + 1 if 2 in row[1:] else len(row)
        assert sequence == row[:end]


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_kv_cache_decode_equals_full_forward(attn_implementation):
    ours = ours_from(hf_model(), attn_implementation)
    features, frame_mask, ids, _ = batch()
    with torch.no_grad():
        full = ours(features, frame_mask, ids)
        encoded = ours.encode(features, frame_mask)
        logits, cache = ours.decode(ids[:, :3], encoded, frame_mask)
        steps = [logits]
        for position in range(3, ids.shape[1]):
            logits, cache = ours.decode(ids[:, position : position + 1], encoded, frame_mask, cache=cache)
            steps.append(logits)
    assert len(cache) == 2 and cache[0][0].shape == (3, 4, 7, 16) and cache[0][2].shape == (3, 4, 13, 16)
    diff = (torch.cat(steps, dim=1) - full).abs().max().item()
    print(f"{attn_implementation}: cached vs full logits max abs diff {diff:.2e}")
    assert diff < 1e-4


def test_state_dict_keys_equal_transformers():
    hf = hf_model()
    ours = model_from_hf_config(hf.config.to_dict())
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in hf.state_dict().items()}
    assert "model.encoder.conv.conv_layers.1.weight" in ours.state_dict()
    assert ours.lm_head.weight is ours.model.decoder.embed_tokens.weight
    assert ours.get_encoder() is ours.model.encoder
    torch.testing.assert_close(ours.model.decoder.embed_positions.weights,
                               hf.model.decoder.embed_positions.weights, rtol=0, atol=0)


def test_bad_inputs_raise_clear_errors():
    ours = ours_from(hf_model())
    features, frame_mask, ids, _ = batch()
    with pytest.raises(ValueError, match=r"\[batch, frames, 16\]"):
        ours.encode(features.transpose(1, 2))  # Whisper's [batch, n_mels, frames] layout
    with pytest.raises(ValueError, match="frame mask"):
        ours(features, frame_mask[:, :40], ids)
    encoded = ours.encode(features, frame_mask)
    with pytest.raises(ValueError, match="subsample to 5 positions"):
        ours.decode(ids, encoded, frame_mask[:, :20])
    with pytest.raises(ValueError, match="attn_implementation"):
        Speech2TextForConditionalGeneration(Speech2TextConfig(**TINY), attn_implementation="fast")


def test_config_checks_and_round_trip():
    with pytest.raises(ValueError, match="divisible by encoder_attention_heads"):
        Speech2TextConfig(**{**TINY, "encoder_attention_heads": 5})
    with pytest.raises(ValueError, match="conv_kernel_sizes"):
        Speech2TextConfig(**{**TINY, "conv_kernel_sizes": [5, 5, 5]})
    with pytest.raises(ValueError, match="odd"):
        Speech2TextConfig(**{**TINY, "conv_kernel_sizes": [4, 5]})
    with pytest.raises(ValueError, match="pad_token_id=100"):
        Speech2TextConfig(**{**TINY, "pad_token_id": 100})
    config = Speech2TextConfig.from_hf_dict({**TINY, "dropout": 0.1, "torch_dtype": "float32", "num_beams": 5})
    assert config.dropout == 0.1 and config.conv_kernel_sizes == [5, 5]
    hf_config = transformers.Speech2TextConfig(**config.to_hf_dict())
    assert Speech2TextConfig.from_hf_dict(hf_config.to_dict()) == config
    with pytest.raises(ValueError, match="model_type"):
        Speech2TextConfig.from_hf_dict({"model_type": "whisper"})


def test_our_export_loads_in_transformers(tmp_path):
    ours = ours_from(hf_model())
    save_pretrained(ours, tmp_path)
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as handle:
        assert "lm_head.weight" not in handle.keys()
    hf = transformers.Speech2TextForConditionalGeneration.from_pretrained(tmp_path).eval()
    features, frame_mask, ids, _ = batch()
    with torch.no_grad():
        expected = hf(input_features=features, attention_mask=frame_mask.long(), decoder_input_ids=ids).logits
        diff = (expected - ours(features, frame_mask, ids)).abs().max().item()
    print(f"ours -> transformers logits max abs diff {diff:.2e}")
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
    assert ours.lm_head.weight is ours.model.decoder.embed_tokens.weight
    assert ours.model.encoder.embed_positions.weights.device.type == "cpu"  # rebuilt after the meta-device load
    features, frame_mask, ids, _ = batch()
    with torch.no_grad():
        expected = hf(input_features=features, attention_mask=frame_mask.long(), decoder_input_ids=ids).logits
        diff = (expected - ours(features, frame_mask, ids)).abs().max().item()
    print(f"transformers -> ours logits max abs diff {diff:.2e}")
    assert diff < 1e-4


def test_load_pretrained_reports_missing_and_mismatched_weights(tmp_path):
    from safetensors.torch import load_file, save_file

    save_pretrained(Speech2TextForConditionalGeneration(Speech2TextConfig(**TINY)), tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["model.encoder.conv.conv_layers.0.bias"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing keys \['model.encoder.conv.conv_layers.0.bias'\]"):
        load_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "conv_channels": 32}))
    with pytest.raises(ValueError, match="shape mismatches"):
        load_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path / "nowhere")


def test_build_speech2text_from_scratch_and_pretrained(tmp_path):
    from speechtrain.models.speech2text.tokenizer import train_s2t_tokenizer

    tokenizer = train_s2t_tokenizer(["a small corpus of spoken words", "more words here and there"] * 4,
                                    vocab_size=28)
    sizes = {name: TINY[name] for name in ("d_model", "encoder_layers", "decoder_layers", "conv_channels",
                                           "input_feat_per_channel", "encoder_ffn_dim", "decoder_ffn_dim")}
    model = build_speech2text(tokenizer, sizes)
    assert model.config.vocab_size == len(tokenizer) == 28
    assert model.config.decoder_start_token_id == tokenizer.prefix_ids[0] == tokenizer.eos_id == 2
    assert (model.config.pad_token_id, model.config.bos_token_id) == (tokenizer.pad_id, tokenizer.bos_id) == (1, 0)
    with pytest.raises(ValueError, match="unknown Speech2TextConfig keys"):
        build_speech2text(tokenizer, {"hidden_size": 64})
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        build_speech2text(tokenizer, {**sizes, "vocab_size": 10})
    save_pretrained(model, tmp_path)
    loaded = build_speech2text(tokenizer, {"dropout": 0.2}, pretrained=str(tmp_path))
    assert loaded.config.dropout == 0.2
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())
