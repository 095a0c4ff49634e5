"""VITS synthesis parity with transformers' VitsModel, weight-norm naming, hub round trips and config checks."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from speechtrain.models.vits import (
    VitsConfig,
    VitsModel,
    load_hf_state_dict,
    load_pretrained,
    model_from_hf_config,
    save_pretrained,
    state_dict_to_hf,
)

transformers = pytest.importorskip("transformers")

TINY = dict(
    vocab_size=20, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64, flow_size=16,
    spectrogram_bins=9, upsample_initial_channel=32, upsample_rates=[2, 2], upsample_kernel_sizes=[4, 4],
    resblock_kernel_sizes=[3, 5], resblock_dilation_sizes=[[1, 3], [1, 3]], duration_predictor_filter_channels=32,
    prior_encoder_num_flows=2, prior_encoder_num_wavenet_layers=2, posterior_encoder_num_wavenet_layers=2,
    duration_predictor_num_flows=2, depth_separable_num_layers=2,
)
SPEAKERS = dict(num_speakers=3, speaker_embedding_size=8)


def hf_model(seed=0, **overrides):
    torch.manual_seed(seed)
    model = transformers.VitsModel(transformers.VitsConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():  # keep the output tanh out of saturation, so waveform differences show
        model.decoder.conv_post.weight.mul_(0.02)
    model.noise_scale = model.noise_scale_duration = 0.0
    return model


def ours_from(hf):
    model = VitsModel(VitsConfig.from_hf_dict(hf.config.to_dict()))
    load_hf_state_dict(model, hf.state_dict())  # strict: every key by name and shape
    return model.eval()


def texts():
    ids = torch.randint(1, TINY["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 5:] = 0  # the second text is shorter
    return ids, mask


def synthesize(model, ids, mask, speaker_id=None):
    with torch.no_grad():
        if isinstance(model, VitsModel):
            return model(ids, mask, speaker_id=speaker_id, noise_scale=0.0, noise_scale_duration=0.0)
        output = model(input_ids=ids, attention_mask=mask, speaker_id=speaker_id)
        return output.waveform, output.sequence_lengths


def assert_same_speech(expected, actual, label):
    (expected_wave, expected_lengths), (wave, lengths) = expected, actual
    assert torch.equal(lengths, expected_lengths)
    assert wave.shape == expected_wave.shape
    assert expected_wave.std() > 0.01  # a waveform worth comparing, not silence or a saturated tanh
    diff = (wave - expected_wave).abs().max().item()
    print(f"{label}: waveform max abs diff {diff:.2e} (lengths {lengths.tolist()})")
    assert diff < 1e-4


@pytest.mark.parametrize("stochastic", [True, False], ids=["stochastic_durations", "deterministic_durations"])
@pytest.mark.parametrize("speakers", [False, True], ids=["one_speaker", "three_speakers"])
def test_synthesis_matches_transformers(stochastic, speakers):
    hf = hf_model(use_stochastic_duration_prediction=stochastic, **(SPEAKERS if speakers else {}))
    ours = ours_from(hf)
    ids, mask = texts()
    speaker_id = 2 if speakers else None
    expected = synthesize(hf, ids, mask, speaker_id)
    assert expected[1][0] != expected[1][1]  # rows of different lengths: the padding is exercised
    label = f"stochastic={stochastic} speakers={speakers}"
    assert_same_speech(expected, synthesize(ours, ids, mask, speaker_id), label)


def test_text_encoder_matches_transformers():
    hf = hf_model()
    ours = ours_from(hf)
    ids, mask = texts()
    with torch.no_grad():
        expected = hf.text_encoder(ids, mask[..., None].float(), attention_mask=mask)
        hidden, means, log_stddevs, text_mask = ours.encode_text(ids, mask)
    for name, value, reference in (("hidden", hidden, expected.last_hidden_state),
                                   ("means", means, expected.prior_means),
                                   ("log_stddevs", log_stddevs, expected.prior_log_variances)):
        diff = (value.transpose(1, 2) - reference).abs().max().item()
        print(f"text encoder {name}: max abs diff {diff:.2e}")
        assert diff < 1e-5
    assert torch.equal(text_mask[:, 0], mask.float())


def test_a_trained_blank_row_loads_and_speaks_as_in_transformers():
    """MMS checkpoints were trained without padding_idx, so their blank (pad) row is not zero; transformers uses
    it as stored, and so must we (our embedding has no padding_idx, transformers' has: same forward)."""
    hf = hf_model(pad_token_id=0)
    with torch.no_grad():
        hf.text_encoder.embed_tokens.weight[0].normal_(0.0, 1.0)
    ours = ours_from(hf)
    ids, mask = texts()
    ids[:, ::2] = 0  # blanks interspersed, as the tokenizer writes them
    assert_same_speech(synthesize(hf, ids, mask), synthesize(ours, ids, mask), "blank row trained")


@pytest.mark.parametrize("window_size", [4, 0], ids=["relative_positions", "plain_attention"])
def test_padding_does_not_change_a_texts_encoding(window_size):
    torch.manual_seed(0)
    ours = VitsModel(VitsConfig(**TINY, window_size=window_size, use_stochastic_duration_prediction=False)).eval()
    ids, mask = texts()
    with torch.no_grad():
        padded, alone = ours.encode_text(ids, mask), ours.encode_text(ids[1:, :5], mask[1:, :5])
    for padded_value, alone_value in zip(padded[:3], alone[:3]):  # hidden states and prior statistics
        torch.testing.assert_close(padded_value[1:, :, :5], alone_value, rtol=1e-5, atol=1e-5)
        assert padded_value[1, :, 5:].abs().max() == 0
    # lengths only: the HiFi-GAN (unmasked, as in the original) lets the padding's biases reach the last frames
    assert synthesize(ours, ids, mask)[1][1] == synthesize(ours, ids[1:, :5], mask[1:, :5])[1][0]


def test_speaker_ids_change_the_voice_and_are_checked():
    hf = hf_model(**SPEAKERS)
    ours = ours_from(hf)
    ids, mask = texts()
    first, second = synthesize(ours, ids, mask, 0), synthesize(ours, ids, mask, torch.tensor([1, 1]))
    assert not (first[1].equal(second[1]) and torch.allclose(first[0], second[0]))
    with pytest.raises(ValueError, match="outside"):
        synthesize(ours, ids, mask, 3)
    with pytest.raises(ValueError, match="entries"):
        synthesize(ours, ids, mask, torch.tensor([0, 1, 2]))


def test_decoder_trains_with_weight_norm_and_saves_transformers_names():
    hf = hf_model()
    ours = ours_from(hf)
    ours_keys = set(ours.state_dict())
    assert "decoder.upsampler.0.parametrizations.weight.original1" in ours_keys
    assert "decoder.upsampler.0.weight" not in ours_keys
    converted = state_dict_to_hf(ours)
    assert set(converted) == set(hf.state_dict())
    for key, value in hf.state_dict().items():
        torch.testing.assert_close(converted[key], value, rtol=1e-6, atol=1e-6)


def test_save_pretrained_loads_into_transformers(tmp_path):
    hf = hf_model(use_stochastic_duration_prediction=False, **SPEAKERS)
    ours = ours_from(hf)
    save_pretrained(ours, tmp_path)
    reloaded, info = transformers.VitsModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    reloaded.eval().noise_scale = reloaded.noise_scale_duration = 0.0
    ids, mask = texts()
    assert_same_speech(synthesize(ours, ids, mask, 1), synthesize(reloaded, ids, mask, 1), "ours -> transformers")


def test_transformers_folder_loads_into_ours(tmp_path):
    hf = hf_model()
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path).eval()
    assert ours.config == VitsConfig.from_hf_dict(hf.config.to_dict())
    ids, mask = texts()
    assert_same_speech(synthesize(hf, ids, mask), synthesize(ours, ids, mask), "transformers -> ours")


def test_legacy_weight_g_weight_v_names_load(tmp_path):
    """MMS checkpoints on the Hub name the WaveNet weight norm `weight_g`/`weight_v`."""
    hf = hf_model()
    hf.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    legacy = {key.replace(".parametrizations.weight.original0", ".weight_g")
              .replace(".parametrizations.weight.original1", ".weight_v"): value for key, value in state.items()}
    assert any(key.endswith(".weight_g") for key in legacy)
    save_file(legacy, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ids, mask = texts()
    assert_same_speech(synthesize(hf, ids, mask), synthesize(load_pretrained(tmp_path).eval(), ids, mask), "legacy")


def test_load_pretrained_reports_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path)
    hf_model().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unknown VitsConfig keys"):
        load_pretrained(tmp_path, {"hidden_dim": 3})
    with pytest.raises(ValueError, match="shape mismatches"):
        load_pretrained(tmp_path, {"vocab_size": 21})
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_attention_heads": 3}))
    with pytest.raises(ValueError, match="config.json.*divisible"):
        load_pretrained(tmp_path)


def test_config_round_trips_through_transformers():
    config = VitsConfig(**TINY, **SPEAKERS, use_stochastic_duration_prediction=False)
    hf_config = transformers.VitsConfig(**config.to_hf_dict())
    assert VitsConfig.from_hf_dict(hf_config.to_dict()) == config
    assert config.hop_length == 4
    assert isinstance(model_from_hf_config(config.to_hf_dict()), VitsModel)


@pytest.mark.parametrize("overrides, message", [
    (dict(num_attention_heads=3), "divisible"),
    (dict(upsample_kernel_sizes=[4]), "same length"),
    (dict(upsample_kernel_sizes=[5, 4]), "must be even"),
    (dict(num_speakers=2), "speaker_embedding_size"),
    (dict(flow_size=15), "even"),
    (dict(hidden_dropout=1.0), r"\[0, 1\)"),
    (dict(hidden_act="tanh"), "hidden_act"),
    (dict(pad_token_id=20), "pad_token_id"),
    (dict(upsample_initial_channel=30), "divisible"),
])
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        VitsConfig(**{**TINY, **overrides})


def test_from_hf_dict_rejects_other_model_types():
    with pytest.raises(ValueError, match="model_type='whisper'"):
        VitsConfig.from_hf_dict({"model_type": "whisper"})
