import dataclasses

import pytest
import torch

from speechtrain.models.bark import (
    BarkCausalModel,
    BarkFineModel,
    BarkGenerationConfig,
    BarkSubModelConfig,
    build_coarse_acoustics,
    build_semantic,
    load_hf_state_dict,
    load_pretrained,
    model_from_hf_config,
    save_pretrained,
)

transformers = pytest.importorskip("transformers")

# Real Bark vocabularies (the layout constants need them) with tiny widths; initializer_range 10x transformers'
# default so that random logits spread and the comparisons bite.
SIZES = {
    "semantic": dict(input_vocab_size=129_600, output_vocab_size=10_048, block_size=512),
    "coarse_acoustics": dict(input_vocab_size=12_096, output_vocab_size=12_048, block_size=1024),
    "fine_acoustics": dict(input_vocab_size=1056, output_vocab_size=1056, block_size=1024),
}
TINY = dict(hidden_size=32, num_layers=2, num_heads=2, initializer_range=0.2)


def hf_model(kind, seed=0, **overrides):
    classes = {"semantic": (transformers.BarkSemanticConfig, transformers.BarkSemanticModel),
               "coarse_acoustics": (transformers.BarkCoarseConfig, transformers.BarkCoarseModel),
               "fine_acoustics": (transformers.BarkFineConfig, transformers.BarkFineModel)}
    config_class, model_class = classes[kind]
    torch.manual_seed(seed)
    return model_class(config_class(**{**SIZES[kind], **TINY, **overrides})).eval()


def ours_from(hf, attn_implementation="sdpa"):
    model = model_from_hf_config({**hf.config.to_dict(), "attn_implementation": attn_implementation})
    load_hf_state_dict(model, hf.state_dict())
    return model.eval()


CAUSAL = ["semantic", "coarse_acoustics"]


def ids(kind, shape, seed=1):
    high = {"semantic": 129_600, "coarse_acoustics": 12_096, "fine_acoustics": 1025}[kind]
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", CAUSAL)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_causal_logits_match_transformers(kind, bias, attn_implementation):
    hf = hf_model(kind, bias=bias)
    ours = ours_from(hf, attn_implementation)
    input_ids = ids(kind, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 8:] = 0
    with torch.no_grad():
        expected = hf(input_ids, attention_mask=mask, use_cache=False).logits
        logits, _ = ours(input_ids, attention_mask=mask)
    assert expected.std() > 0.5
    assert (logits - expected)[0].abs().max() < 1e-4
    assert (logits - expected)[1, :8].abs().max() < 1e-4  # padded queries may differ; real ones may not


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_fine_logits_match_transformers_for_every_codebook(attn_implementation):
    hf = hf_model("fine_acoustics")
    ours = ours_from(hf, attn_implementation)
    input_ids = ids("fine_acoustics", (2, 40, 8))
    with torch.no_grad():
        for codebook in range(1, 8):
            expected = hf(codebook, input_ids).logits
            assert (ours(codebook, input_ids) - expected).abs().max() < 1e-4, codebook
        per_row = ours(torch.tensor([2, 6]), input_ids)  # one target codebook per row, as training batches do
        assert (per_row[0] - hf(2, input_ids).logits[0]).abs().max() < 1e-4
        assert (per_row[1] - hf(6, input_ids).logits[1]).abs().max() < 1e-4
    assert ours.lm_heads[2].weight is ours.input_embeds_layers[3].weight  # tied as transformers ties them


def test_fine_rejects_coarse_codebooks():
    model = BarkFineModel(BarkSubModelConfig(model_type="fine_acoustics", hidden_size=32, num_layers=1, num_heads=2,
                                             block_size=16, input_vocab_size=20, output_vocab_size=20))
    for codebook_idx in (0, 8, torch.tensor(0), torch.tensor([2, 8])):  # ints, a scalar and one per row
        with pytest.raises(ValueError, match=r"codebook_idx must be in \[1, 8\)"):
            model(codebook_idx, torch.zeros(2, 4, 8, dtype=torch.long))


@pytest.mark.gpu
def test_fine_forward_with_a_codebook_per_row_never_waits_for_the_device():
    model = BarkFineModel(BarkSubModelConfig(model_type="fine_acoustics", hidden_size=32, num_layers=1, num_heads=2,
                                             block_size=16, input_vocab_size=20, output_vocab_size=20)).cuda()
    input_ids, codebook_idx = torch.zeros(2, 4, 8, dtype=torch.long).cuda(), torch.tensor([2, 7]).cuda()
    model(codebook_idx, input_ids)  # initialises cuBLAS
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        logits = model(codebook_idx, input_ids)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert logits.shape == (2, 4, 20)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_cached_decoding_equals_full_forward(attn_implementation):
    ours = ours_from(hf_model("coarse_acoustics"), attn_implementation)
    input_ids = ids("coarse_acoustics", (2, 10))
    with torch.no_grad():
        full, _ = ours(input_ids)
        logits, cache = ours(input_ids[:, :6])
        steps = [logits]
        for t in range(6, 10):
            logits, cache = ours(input_ids[:, t : t + 1], past=cache)
            steps.append(logits)
    assert cache[0][0].shape == (2, 2, 10, 16)
    assert (torch.cat(steps, dim=1) - full).abs().max() < 1e-5


def test_merged_context_sums_text_and_history_embeddings():
    ours = ours_from(hf_model("semantic"))
    input_ids = ids("semantic", (1, 513 + 3))
    merged = ours.embed_merged_context(input_ids)
    table = ours.input_embeds_layer.weight
    assert merged.shape == (1, 256 + 1 + 3, 32)
    assert torch.allclose(merged[0, 5], table[input_ids[0, 5]] + table[input_ids[0, 256 + 5]])
    assert torch.equal(merged[0, 257], table[input_ids[0, 513]])


@pytest.mark.parametrize("kind", ["semantic", "coarse_acoustics", "fine_acoustics"])
def test_folders_round_trip_with_transformers(kind, tmp_path):
    hf = hf_model(kind, bias=kind != "coarse_acoustics")
    hf.save_pretrained(tmp_path / "hf")
    ours = load_pretrained(tmp_path / "hf", {"attn_implementation": "eager"}).eval()
    save_pretrained(ours, tmp_path / "ours")
    model_class = type(hf)
    back = model_class.from_pretrained(tmp_path / "ours").eval()
    input_ids = ids(kind, (2, 20, 8) if kind == "fine_acoustics" else (2, 20))
    with torch.no_grad():
        if kind == "fine_acoustics":
            expected, ours_logits, back_logits = hf(3, input_ids).logits, ours(3, input_ids), back(3, input_ids).logits
        else:
            expected, ours_logits, back_logits = hf(input_ids).logits, ours(input_ids)[0], back(input_ids).logits
    assert (ours_logits - expected).abs().max() < 1e-4
    assert torch.equal(back_logits, expected)
    assert ours.config.to_hf_dict().items() <= {**hf.config.to_dict(), "architectures": [model_class.__name__]}.items()


def test_config_validation_and_builder_errors(tmp_path):
    with pytest.raises(ValueError, match="model_type"):
        BarkSubModelConfig(model_type="bark")
    with pytest.raises(ValueError, match="num_heads"):
        BarkSubModelConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        BarkSubModelConfig(model_type="fine_acoustics", input_vocab_size=1056, output_vocab_size=1024)
    with pytest.raises(ValueError, match="contradicts the builder's 'semantic'"):
        build_semantic({"model_type": "coarse_acoustics"})
    model = build_coarse_acoustics({"hidden_size": 32, "num_layers": 1, "num_heads": 2})
    assert isinstance(model, BarkCausalModel) and model.config.model_type == "coarse_acoustics"
    save_pretrained(model, tmp_path)
    with pytest.raises(ValueError, match="holds a 'coarse_acoustics' model"):
        build_semantic(pretrained=str(tmp_path))
    rebuilt = build_coarse_acoustics(pretrained=str(tmp_path), overrides={"dropout": 0.1})
    assert rebuilt.config.dropout == 0.1


def test_generation_constants_are_transformers_defaults():
    from transformers.models.bark.generation_configuration_bark import BarkGenerationConfig as HfGeneration

    hf = HfGeneration()
    ours = BarkGenerationConfig()
    for section, theirs in ((ours.semantic, hf.semantic_config), (ours.coarse, hf.coarse_acoustics_config),
                            (ours.fine, hf.fine_acoustics_config)):
        for field in dataclasses.fields(section):
            expected = hf.codebook_size if field.name == "codebook_size" else getattr(theirs, field.name)
            assert getattr(section, field.name) == expected, field.name
    assert ours.max_semantic_history == 209  # floor(630 / (75 / 49.9 * 2))
    assert BarkGenerationConfig.from_hf_dict(hf.to_dict()) == ours
