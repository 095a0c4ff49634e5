import json

import pytest
import torch

from speechtrain.hub import load_bundle
from speechtrain.models.soundstorm import (
    SoundStorm,
    SoundStormConfig,
    build_soundstorm,
    load_pretrained,
    load_soundstorm_pytorch_state_dict,
    save_pretrained,
)
from speechtrain.models.soundstorm.modeling import semantic_frame_indices

K, Q = 16, 3


def tiny_config(**overrides) -> SoundStormConfig:
    values = dict(codebook_size=K, num_quantizers=Q, dim=32, depth=2, heads=2, dim_head=16, conv_kernel_size=5,
                  num_semantic_tokens=10, semantic_rate=25.0, acoustic_rate=50.0)
    return SoundStormConfig(**{**values, **overrides})


def inputs(batch=2, frames=20, seed=0):
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, K + 1, (batch, frames, Q), generator=generator)
    semantic = torch.randint(0, 10, (batch, frames // 2), generator=generator)
    return codes, semantic


def test_logit_shape_and_config_errors():
    model = SoundStorm(tiny_config()).eval()
    codes, semantic = inputs()
    assert model(codes, None, semantic).shape == (2, 20, Q, K)
    with pytest.raises(ValueError, match="num_quantizers"):
        model(codes[..., :2], None, semantic)
    with pytest.raises(ValueError, match="semantic_ids"):
        model(codes)
    with pytest.raises(ValueError, match="dim_head"):
        tiny_config(dim_head=15)
    with pytest.raises(ValueError, match="attn_implementation"):
        tiny_config(attn_implementation="fast")


def test_eager_and_sdpa_agree_with_padding():
    torch.manual_seed(0)
    sdpa = SoundStorm(tiny_config()).eval()
    eager = SoundStorm(tiny_config(attn_implementation="eager")).eval()
    eager.load_state_dict(sdpa.state_dict())
    codes, semantic = inputs()
    frame_mask = torch.ones(2, 20, dtype=torch.bool)
    frame_mask[1, 13:] = False
    difference = (sdpa(codes, frame_mask, semantic) - eager(codes, frame_mask, semantic))[frame_mask].abs().max()
    assert difference < 1e-5


def test_padded_item_gives_the_same_logits_as_alone():
    torch.manual_seed(0)
    model = SoundStorm(tiny_config(self_condition=True)).eval()
    codes, semantic = inputs(frames=24)
    alone_codes, alone_semantic = codes[1:, :15], semantic[1:, :8]
    frame_mask = torch.ones(2, 24, dtype=torch.bool)
    frame_mask[1, 15:] = False
    semantic_mask = torch.ones(2, 12, dtype=torch.bool)
    semantic_mask[1, 8:] = False
    padded_codes, padded_semantic = codes.clone(), semantic.clone()
    padded_codes[1, 15:] = 7  # anything in the padding
    padded_semantic[1, 8:] = 9
    batched = model(padded_codes, frame_mask, padded_semantic, semantic_mask)[1, :15]
    alone = model(alone_codes, None, alone_semantic)[0]
    assert (batched - alone).abs().max() < 1e-5


def test_semantic_frames_are_read_by_nearest_index_and_clamped_to_each_length():
    indices = semantic_frame_indices(7, torch.tensor([10, 2]), semantic_rate=50.0, acoustic_rate=75.0)
    assert indices.tolist() == [[0, 0, 1, 2, 2, 3, 4], [0, 0, 1, 1, 1, 1, 1]]


def test_semantic_conditioning_changes_the_logits_where_the_token_is_read():
    torch.manual_seed(0)
    model = SoundStorm(tiny_config(depth=1, conv_kernel_size=1)).eval()
    model.conformer.layers[0].attn.to_out.weight.data.zero_()  # no mixing across frames: frame t sees itself only
    model.conformer.layers[0].attn.to_out.bias.data.zero_()
    codes, semantic = inputs()
    changed = semantic.clone()
    changed[:, 3] = (changed[:, 3] + 1) % 10  # semantic frame 3 = codec frames 6 and 7 at 25 / 50 Hz
    difference = (model(codes, None, semantic) - model(codes, None, changed)).abs().amax(dim=(0, 2, 3))
    assert (difference[[6, 7]] > 1e-4).all()
    assert (difference[[i for i in range(20) if i not in (6, 7)]] < 1e-6).all()


def test_hub_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    model = SoundStorm(tiny_config(self_condition=True)).eval()
    save_pretrained(model, tmp_path / "folder")
    config = json.loads((tmp_path / "folder" / "config.json").read_text())
    assert config["model_type"] == "soundstorm" and config["num_quantizers"] == Q
    loaded = load_pretrained(tmp_path / "folder").eval()
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    codes, semantic = inputs()
    assert torch.equal(model(codes, None, semantic), loaded(codes, None, semantic))
    bundled, tokenizer, features = load_bundle(tmp_path / "folder")
    assert isinstance(bundled, SoundStorm) and tokenizer is None and features is None
    assert load_pretrained(tmp_path / "folder", {"attn_implementation": "eager"}).config.attn_implementation == "eager"
    with pytest.raises(ValueError, match="unknown SoundStormConfig keys"):
        load_pretrained(tmp_path / "folder", {"width": 3})


def test_wrong_weights_are_reported_with_the_folder(tmp_path):
    save_pretrained(SoundStorm(tiny_config()), tmp_path / "a")
    config = tiny_config(dim=64).to_hf_dict()
    (tmp_path / "a" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="shape mismatches"):
        load_pretrained(tmp_path / "a")


def test_builder_from_fields_and_from_a_folder(tmp_path):
    model = build_soundstorm({"dim": 32, "depth": 1, "heads": 2, "dim_head": 16},
                             overrides={"codebook_size": K, "num_quantizers": Q, "num_semantic_tokens": 0})
    assert model.config.codebook_size == K and model.semantic_token_emb is None
    save_pretrained(model, tmp_path / "m")
    again = build_soundstorm(pretrained=str(tmp_path / "m"), overrides={"ff_dropout": 0.1})
    assert again.config.ff_dropout == 0.1 and again.config.dim == 32


def test_seed_names_map_onto_ours():
    model = SoundStorm(tiny_config(depth=1, self_condition=True))
    ours = model.state_dict()
    seed_names = {
        "net.code_embeds.weight": "code_embeds.weight",
        "net.conformer.layers.0.ff1.fn.fn.net.0.weight": "conformer.layers.0.ff1.fc1.weight",
        "net.conformer.layers.0.ff2.fn.norm.bias": "conformer.layers.0.ff2.norm.bias",
        "net.conformer.layers.0.attn.fn.to_kv.weight": "conformer.layers.0.attn.to_kv.weight",
        "net.conformer.layers.0.attn.norm.weight": "conformer.layers.0.attn.norm.weight",
        "net.conformer.layers.0.conv.net1.2.weight": "conformer.layers.0.conv.pointwise_in.weight",
        "net.conformer.layers.0.conv.ds_conv.conv.bias": "conformer.layers.0.conv.depthwise.bias",
        "net.conformer.layers.0.conv.net2.1.gamma": "conformer.layers.0.conv.channel_norm.gamma",
        "net.conformer.layers.0.post_norm.weight": "conformer.layers.0.post_norm.weight",
        "net.heads.0.weight": "heads.weight",
        "net.to_logits.0.bias": "logits_norm.bias",
        "net.to_logits.2.weight": "logits_weight",
        "semantic_token_emb.weight": "semantic_token_emb.weight",
        "null_embed": "null_embed",
        "to_self_cond.weight": "to_self_cond.weight",
    }
    renamed = load_soundstorm_pytorch_state_dict({key: torch.zeros(1) for key in seed_names})
    assert list(renamed) == list(seed_names.values())
    assert set(renamed) <= set(ours)
