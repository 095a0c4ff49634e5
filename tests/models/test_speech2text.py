"""Speech2Text against transformers: logits, frame-mask subsampling, greedy and beam decoding, config checks.

The checks it shares with Whisper (cached decoding, Hub folders, config round trip) are in test_seq2seq_families.py.
"""

from functools import partial

import pytest
import torch
from transformers_parity import ours_from_transformers

from speechtrain.decoding import beam_search, greedy_decode
from speechtrain.models.speech2text import Speech2TextConfig, build_speech2text, model_from_hf_config, save_pretrained

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


ours_from = partial(ours_from_transformers, model_from_hf_config)  # ours_from(hf, attn_implementation="sdpa")


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
        Speech2TextConfig(**TINY, attn_implementation="fast")


@pytest.mark.parametrize(("change", "message"), [
    ({"encoder_attention_heads": 5}, "divisible by encoder_attention_heads"),
    ({"conv_kernel_sizes": [5, 5, 5]}, "conv_kernel_sizes"),
    ({"conv_kernel_sizes": [4, 5]}, "odd"),
    ({"pad_token_id": 100}, "pad_token_id=100"),
])
def test_config_checks(change, message):
    with pytest.raises(ValueError, match=message):
        Speech2TextConfig(**{**TINY, **change})


def test_config_from_a_transformers_dict_ignores_other_keys():
    config = Speech2TextConfig.from_hf_dict({**TINY, "dropout": 0.1, "torch_dtype": "float32", "num_beams": 5})
    assert config.dropout == 0.1 and config.conv_kernel_sizes == [5, 5]


def test_build_speech2text_from_scratch_and_pretrained(tmp_path):
    from speechtrain.models.speech2text.tokenizer import train_s2t_tokenizer

    tokenizer = train_s2t_tokenizer(["a small corpus of spoken words", "more words here and there"] * 4,
                                    vocab_size=28)
    sizes = {name: TINY[name] for name in ("d_model", "encoder_layers", "decoder_layers", "conv_channels",
                                           "input_feat_per_channel", "encoder_ffn_dim", "decoder_ffn_dim")}
    model = build_speech2text(sizes, tokenizer=tokenizer)
    assert model.config.vocab_size == len(tokenizer) == 28
    assert model.config.decoder_start_token_id == tokenizer.prefix_ids[0] == tokenizer.eos_id == 2
    assert (model.config.pad_token_id, model.config.bos_token_id) == (tokenizer.pad_id, tokenizer.bos_id) == (1, 0)
    with pytest.raises(ValueError, match="unknown Speech2TextConfig keys"):
        build_speech2text({"hidden_size": 64}, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        build_speech2text({**sizes, "vocab_size": 10}, tokenizer=tokenizer)
    save_pretrained(model, tmp_path)
    loaded = build_speech2text(pretrained=str(tmp_path), overrides={"dropout": 0.2}, tokenizer=tokenizer)
    assert loaded.config.dropout == 0.2
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())
