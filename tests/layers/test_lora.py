import pytest
import torch
from torch import nn

from speechtrain.layers.lora import LoRALinear, apply_lora, lora_parameter_names, merge_lora
from speechtrain.models.bark import BarkCausalModel, BarkFineModel, BarkSubModelConfig, save_pretrained

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, block_size=64, initializer_range=0.2)


def coarse_model(seed=0) -> BarkCausalModel:
    torch.manual_seed(seed)
    return BarkCausalModel(BarkSubModelConfig(model_type="coarse_acoustics", input_vocab_size=300,
                                              output_vocab_size=300, **TINY))


def train_steps(model, steps=5, seed=1):
    """A few AdamW steps on random next-token data; returns the model."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 300, (2, 20), generator=generator)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        logits, _ = model(ids[:, :-1])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def test_lora_linear_starts_as_the_base_and_keeps_its_names():
    torch.manual_seed(0)
    base = nn.Linear(8, 6)
    x = torch.randn(3, 8)
    expected = base(x)
    lora = LoRALinear(base, rank=2, alpha=4.0)
    assert torch.equal(lora(x), expected)  # lora_b starts at zero
    assert sorted(name for name, _ in lora.named_parameters()) == ["bias", "lora_a", "lora_b", "weight"]
    assert lora.weight is base.weight and not lora.weight.requires_grad and lora.lora_a.requires_grad
    with torch.no_grad():
        lora.lora_b.normal_()
    manual = x @ base.weight.T + base.bias + 2.0 * (x @ lora.lora_a.T @ lora.lora_b.T)  # alpha / rank = 2
    assert torch.allclose(lora(x), manual, atol=1e-6)


def test_only_adapters_train_and_base_weights_stay_bit_identical():
    model = coarse_model()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    apply_lora(model, ["att_proj", "attn.out_proj"], rank=4, alpha=8.0)
    trainable = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    assert trainable == sorted(lora_parameter_names(model))
    assert trainable == sorted(f"layers.{i}.attn.{layer}.lora_{ab}" for i in range(2)
                               for layer in ("att_proj", "out_proj") for ab in "ab")
    assert isinstance(model.layers[0].mlp.out_proj, nn.Linear)  # "attn.out_proj" does not match the MLP's
    adapters = {name: p.clone() for name, p in model.named_parameters() if p.requires_grad}
    train_steps(model)
    after = model.state_dict()
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    assert all(not torch.equal(after[name], value) for name, value in adapters.items() if name.endswith("lora_b"))


def test_merged_model_computes_what_the_adapted_one_did_under_transformers_names(tmp_path):
    transformers = pytest.importorskip("transformers")
    plain_keys = set(coarse_model().state_dict())
    model = train_steps(apply_lora(coarse_model(), ["att_proj", "out_proj", "in_proj"], rank=4, alpha=8.0)).eval()
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        adapted, _ = model(ids)
        merged_model = merge_lora(model)
        merged, _ = merged_model(ids)
    assert not any(isinstance(m, LoRALinear) for m in merged_model.modules())
    assert set(merged_model.state_dict()) == plain_keys
    assert (adapted - merged).abs().max() < 1e-5
    assert (adapted - coarse_model().eval()(ids)[0]).abs().max() > 1e-2  # the adapters did change the model

    save_pretrained(merged_model, tmp_path)
    theirs = transformers.BarkCoarseModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        hf_logits = theirs(input_ids=ids).logits
    assert (hf_logits - merged).abs().max() < 1e-4


def test_bad_targets_are_refused():
    names = r"\['att_proj', 'in_proj', 'lm_head', 'out_proj'\]"
    with pytest.raises(ValueError, match=rf"match no nn.Linear .* named {names}"):
        apply_lora(coarse_model(), ["q_proj"])
    fine = BarkFineModel(BarkSubModelConfig(model_type="fine_acoustics", input_vocab_size=40, output_vocab_size=40,
                                            **TINY))
    with pytest.raises(ValueError, match="lm_heads.0.*shares its weight.*input_embeds_layers.1.weight"):
        apply_lora(fine, ["lm_heads.0"])
    with pytest.raises(ValueError, match="rank must be a positive"):
        LoRALinear(nn.Linear(4, 4), rank=0)


def test_dropout_acts_on_the_adapter_path_only_in_training():
    torch.manual_seed(0)
    lora = LoRALinear(nn.Linear(16, 16), rank=4, dropout=0.5)
    with torch.no_grad():
        lora.lora_b.normal_()
    x = torch.randn(4, 16)
    lora.train()
    assert not torch.equal(lora(x), lora(x))
    lora.eval()
    assert torch.equal(lora(x), lora(x))
    assert torch.allclose(lora(x), lora.merged()(x), atol=1e-5)
