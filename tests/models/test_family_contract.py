"""Every model type in the registry fills the one contract: built from scratch at a tiny size with the same
builder signature, saved and loaded back bit-exact, given a model card, split into FSDP blocks, and run with each
attention implementation chosen the same way (`overrides={"attn_implementation": ...}`)."""

import inspect
import json

import pytest
import torch

from speechtrain.distributed import block_classes
from speechtrain.errors import CheckpointError
from speechtrain.hub import CONFIG_NAME, read_state_dict
from speechtrain.model_card import write_model_card
from speechtrain.models.registry import families, family_of_builder, get_family

MODEL_TYPES = {"whisper", "speech_to_text", "vits", "soundstorm", "semantic", "coarse_acoustics", "fine_acoustics"}
ASR = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
           encoder_ffn_dim=64, decoder_ffn_dim=64, max_target_positions=16)
BARK = dict(block_size=64, num_layers=1, num_heads=2, hidden_size=32)
TINY = {
    "whisper": dict(ASR, vocab_size=64, num_mel_bins=16, max_source_positions=16, pad_token_id=0, bos_token_id=1,
                    eos_token_id=1, decoder_start_token_id=2, begin_suppress_tokens=[1]),
    "speech_to_text": dict(ASR, vocab_size=64, conv_channels=32, input_feat_per_channel=16, max_source_positions=64),
    "vits": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, ffn_dim=64, flow_size=32,
                 window_size=0, upsample_initial_channel=32, upsample_rates=[8, 8], upsample_kernel_sizes=[16, 16],
                 resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]], posterior_encoder_num_wavenet_layers=1,
                 prior_encoder_num_flows=1, duration_predictor_filter_channels=32, duration_predictor_num_flows=1),
    "soundstorm": dict(dim=32, depth=1, heads=2, dim_head=16, codebook_size=16, num_quantizers=2,
                       num_semantic_tokens=8),
    "semantic": dict(BARK, input_vocab_size=96, output_vocab_size=48),
    "coarse_acoustics": dict(BARK, input_vocab_size=96, output_vocab_size=96),
    "fine_acoustics": dict(BARK, input_vocab_size=40, output_vocab_size=40),
}
# FlashAttention-2 needs CUDA and the flash_attn package; elsewhere the dispatch falls back to SDPA with a warning.
FLASH = torch.cuda.is_available() and __import__("importlib").util.find_spec("flash_attn") is not None
IMPLEMENTATIONS = ["eager", "sdpa"] + (["flash_attention_2"] if FLASH else [])


def attention_implementations(model: torch.nn.Module) -> set[str]:
    """The implementation every attention module of `model` dispatches to."""
    return {module.attn_implementation for module in model.modules() if hasattr(module, "attn_implementation")}


def test_the_seven_model_types_are_registered():
    assert set(families()) == MODEL_TYPES
    assert set(TINY) == MODEL_TYPES  # a new family gets a tiny size here too


def test_unknown_model_type_names_the_known_ones():
    with pytest.raises(CheckpointError, match="known: coarse_acoustics, fine_acoustics, semantic"):
        get_family("wav2vec2", "some/config.json")


@pytest.mark.parametrize("model_type", sorted(MODEL_TYPES))
def test_the_same_signatures(model_type):
    family = get_family(model_type)
    build = list(inspect.signature(family.build).parameters.values())
    assert [(p.name, p.default) for p in build[:3]] == [("config", None), ("pretrained", None), ("overrides", None)]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is None for p in build[3:])  # tokenizer=
    load = list(inspect.signature(family.load_pretrained).parameters.values())
    assert [(p.name, p.default) for p in load[1:]] == [("overrides", None)]
    assert family_of_builder(f"speechtrain.models.somewhere.{family.build.__name__}") is family


@pytest.mark.parametrize("model_type", sorted(MODEL_TYPES))
def test_scratch_build_round_trip_card_and_blocks(model_type, tmp_path):
    family = get_family(model_type)
    torch.manual_seed(0)
    model = family.build(TINY[model_type])
    assert isinstance(model.config, family.config_class) and model.config.to_hf_dict()["model_type"] == model_type

    family.save_pretrained(model, tmp_path / "first")
    loaded = family.load_pretrained(tmp_path / "first")
    assert loaded.config == model.config
    family.save_pretrained(loaded, tmp_path / "second")
    first, second = read_state_dict(tmp_path / "first"), read_state_dict(tmp_path / "second")
    assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)
    assert json.loads((tmp_path / "first" / CONFIG_NAME).read_text())["model_type"] == model_type

    card = write_model_card(tmp_path / "first", "a test").read_text()
    assert f"Load with `{family.card.load}`" in card and f"pipeline_tag: {family.card.pipeline_tag}" in card

    blocks = block_classes(model)
    assert blocks and all(issubclass(block, tuple(type(model).block_classes)) for block in blocks)


@pytest.mark.parametrize("model_type", sorted(MODEL_TYPES))
def test_attention_is_chosen_by_overrides_and_not_saved(model_type, tmp_path):
    family = get_family(model_type)
    for implementation in IMPLEMENTATIONS:
        model = family.build(TINY[model_type], overrides={"attn_implementation": implementation})
        assert model.config.attn_implementation == implementation
        assert attention_implementations(model) == {implementation}
    family.save_pretrained(model, tmp_path)
    assert "attn_implementation" not in json.loads((tmp_path / CONFIG_NAME).read_text())
    for implementation in IMPLEMENTATIONS:
        loaded = family.load_pretrained(tmp_path, {"attn_implementation": implementation})
        assert attention_implementations(loaded) == {implementation}
        rebuilt = family.build(pretrained=tmp_path, overrides={"attn_implementation": implementation})
        assert attention_implementations(rebuilt) == {implementation}
    with pytest.raises(ValueError, match="attn_implementation='fast'"):
        family.build(TINY[model_type], overrides={"attn_implementation": "fast"})


def test_config_and_pretrained_together_are_refused(tmp_path):
    family = get_family("soundstorm")
    family.save_pretrained(family.build(TINY["soundstorm"]), tmp_path)
    with pytest.raises(ValueError, match="put values that change the folder's config.json under overrides"):
        family.build({"dim": 64}, pretrained=tmp_path)
