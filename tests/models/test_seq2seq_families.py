"""What the encoder-decoder ASR families share, checked the same way for Whisper and Speech2Text on each family's
tiny model and batch from its own test module: cached decoding, the flash-attention fallback, and Hub folders in
both directions and with broken content."""

import json
import warnings

import pytest
import test_speech2text as speech2text
import test_whisper as whisper
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import speechtrain.models.speech2text as speech2text_family
import speechtrain.models.whisper as whisper_family

transformers = pytest.importorskip("transformers")


def whisper_inputs():
    """(features, frame mask, decoder ids, decoder mask): Whisper takes no frame mask."""
    features, ids, mask = whisper.batch()
    return features, None, ids, mask


@torch.no_grad()
def whisper_logits_diff(hf, ours):
    features, ids, _ = whisper.batch()
    return (hf(input_features=features, decoder_input_ids=ids).logits - ours(features, None, ids)).abs().max().item()


@torch.no_grad()
def speech2text_logits_diff(hf, ours):
    features, frame_mask, ids, _ = speech2text.batch()
    expected = hf(input_features=features, attention_mask=frame_mask.long(), decoder_input_ids=ids).logits
    return (expected - ours(features, frame_mask, ids)).abs().max().item()


FAMILIES = {
    "whisper": dict(
        tests=whisper, family=whisper_family, hf_class="WhisperForConditionalGeneration",
        config_class=whisper_family.WhisperConfig, hf_config_class="WhisperConfig", other_model_type="bart",
        build=lambda: whisper_family.WhisperForConditionalGeneration(whisper_family.WhisperConfig(**whisper.TINY)),
        tied_key="proj_out.weight", logits_diff=whisper_logits_diff, inputs=whisper_inputs,
        cache_shapes=((2, 4, 7, 16), (2, 4, 50, 16)),  # [B, H, tokens, Dh] self, [B, H, 50 positions, Dh] cross
        dropped_key="model.decoder.layers.1.fc2.bias", resized={"decoder_ffn_dim": 64},
        # the sinusoidal encoder positions stay frozen after loading
        check_loaded=lambda ours: not ours.model.encoder.embed_positions.weight.requires_grad,
    ),
    "speech2text": dict(
        tests=speech2text, family=speech2text_family, hf_class="Speech2TextForConditionalGeneration",
        config_class=speech2text_family.Speech2TextConfig, hf_config_class="Speech2TextConfig",
        other_model_type="whisper",
        build=lambda: speech2text_family.Speech2TextForConditionalGeneration(
            speech2text_family.Speech2TextConfig(**speech2text.TINY)),
        tied_key="lm_head.weight", logits_diff=speech2text_logits_diff, inputs=speech2text.batch,
        cache_shapes=((3, 4, 7, 16), (3, 4, 13, 16)),  # cross: 50 frames subsampled to 13 positions
        dropped_key="model.encoder.conv.conv_layers.0.bias", resized={"conv_channels": 32},
        # the position table is rebuilt on the CPU after the meta-device load
        check_loaded=lambda ours: ours.model.encoder.embed_positions.weights.device.type == "cpu",
    ),
}


@pytest.fixture(params=sorted(FAMILIES))
def case(request):
    return FAMILIES[request.param]


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_kv_cache_decode_equals_full_forward(case, attn_implementation):
    tests = case["tests"]
    ours = tests.ours_from(tests.hf_model(), attn_implementation)
    features, frame_mask, ids, _ = case["inputs"]()
    with torch.no_grad():
        full = ours(features, frame_mask, ids)
        encoded = ours.encode(features, frame_mask)
        logits, cache = ours.decode(ids[:, :3], encoded, frame_mask)
        steps = [logits]
        for position in range(3, ids.shape[1]):
            logits, cache = ours.decode(ids[:, position : position + 1], encoded, frame_mask, cache=cache)
            steps.append(logits)
    assert len(cache) == 2 and (cache[0][0].shape, cache[0][2].shape) == case["cache_shapes"]
    diff = (torch.cat(steps, dim=1) - full).abs().max().item()
    print(f"{attn_implementation}: cached vs full logits max abs diff {diff:.2e}")
    assert diff < 1e-4


@torch.no_grad()
def test_last_layer_cross_attention_weights_match_transformers(case):
    tests = case["tests"]
    hf = tests.hf_model()
    hf.set_attn_implementation("eager")  # transformers returns attention weights from its eager path only
    ours = tests.ours_from(hf, "sdpa")  # ours are the same whatever the attention implementation
    features, frame_mask, ids, ids_mask = case["inputs"]()
    mask_kwargs = {} if frame_mask is None else {"attention_mask": frame_mask.long()}
    expected = hf(input_features=features, decoder_input_ids=ids, decoder_attention_mask=ids_mask,
                  output_attentions=True, **mask_kwargs).cross_attentions[-1]
    weights = ours.cross_attention_weights(features, frame_mask, ids, ids_mask)
    assert weights.shape == expected.shape == (*ids.shape[:1], hf.config.decoder_attention_heads, ids.shape[1],
                                               case["cache_shapes"][1][2])
    torch.testing.assert_close(weights, expected, atol=1e-5, rtol=1e-4)
    assert torch.allclose(weights.sum(-1), torch.ones(())), "each query's weights sum to one"


def test_flash_attention_falls_back_on_cpu(case):
    hf = case["tests"].hf_model()
    inputs = case["inputs"]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flash = case["tests"].ours_from(hf, "flash_attention_2")
        with torch.no_grad():
            torch.testing.assert_close(flash(*inputs), case["tests"].ours_from(hf)(*inputs))


def test_config_round_trips_through_transformers(case):
    config_class = case["config_class"]
    config = config_class(**{**case["tests"].TINY, "dropout": 0.1})
    hf_config = getattr(transformers, case["hf_config_class"])(**config.to_hf_dict())
    assert config_class.from_hf_dict(hf_config.to_dict()) == config
    with pytest.raises(ValueError, match="model_type"):
        config_class.from_hf_dict({"model_type": case["other_model_type"]})


def test_our_export_loads_in_transformers(tmp_path, case):
    ours = case["tests"].ours_from(case["tests"].hf_model())
    case["family"].save_pretrained(ours, tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as handle:
        assert case["tied_key"] not in handle.keys()  # tied to the token embedding, left out as transformers does
    hf = getattr(transformers, case["hf_class"]).from_pretrained(tmp_path).eval()
    diff = case["logits_diff"](hf, ours)
    print(f"ours -> transformers logits max abs diff {diff:.2e}")
    assert diff < 1e-4


@pytest.mark.parametrize("safe_serialization", [True, False])
def test_transformers_export_loads_in_ours(tmp_path, case, safe_serialization):
    hf = case["tests"].hf_model()
    if safe_serialization:
        hf.save_pretrained(tmp_path)
    else:  # an older checkpoint layout: pytorch_model.bin holding the tied weight too
        hf.config.save_pretrained(tmp_path)
        torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    ours = case["family"].load_pretrained(tmp_path, {"attn_implementation": "eager"}).eval()
    assert ours.get_parameter(case["tied_key"]) is ours.model.decoder.embed_tokens.weight
    assert case["check_loaded"](ours)
    diff = case["logits_diff"](hf, ours)
    print(f"transformers -> ours logits max abs diff {diff:.2e}")
    assert diff < 1e-4


def test_load_pretrained_reports_missing_and_mismatched_weights(tmp_path, case):
    family = case["family"]
    family.save_pretrained(case["build"](), tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state[case["dropped_key"]]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=rf"missing keys \['{case['dropped_key']}'\]"):
        family.load_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **case["resized"]}))
    with pytest.raises(ValueError, match="shape mismatches"):
        family.load_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        family.load_pretrained(tmp_path / "nowhere")
