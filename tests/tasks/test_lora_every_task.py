"""LoRA (`task.lora`) for the ASR, TTS and token tasks alike; a Whisper LoRA run exports the merged model and, in
`exported/adapter/`, the adapters alone, which peft loads onto transformers' Whisper to compute what the merged
export computes."""

import pytest
import torch
from safetensors.torch import load_file

from speechtrain.hub import load_bundle, save_bundle
from speechtrain.layers.lora import PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME
from speechtrain.train import build, train

LORA = "task.lora={rank:4,alpha:8,targets:[q_proj,v_proj]}"
TARGETS = {"whisper_mini": LORA, "s2t_mini": LORA, "vits_mini": LORA, "bark_mini": "task.lora={targets:[att_proj]}",
           "soundstorm_mini": "task.lora={targets:[to_q,to_kv]}"}


@pytest.mark.parametrize("recipe", list(TARGETS))
def test_every_task_trains_only_the_adapters_it_is_given(compose, recipe, tmp_path):
    task, _ = build(compose(f"recipe={recipe}", TARGETS[recipe], output_dir=tmp_path))
    trainable = [name for name, p in task.model.named_parameters() if p.requires_grad]
    assert trainable and all(name.endswith((".lora_a", ".lora_b")) for name in trainable), trainable


@pytest.fixture
def whisper_base(compose, tmp_path):
    """The default recipe's untrained Whisper, saved as a Hugging Face-format folder to fine-tune."""
    torch.manual_seed(0)
    task, _ = build(compose("recipe=whisper_mini", output_dir=tmp_path / "base_run"))
    save_bundle(tmp_path / "base", task.model, task.tokenizer, task.feature_extractor)
    return tmp_path / "base"


def test_a_whisper_lora_run_changes_only_the_targets_and_peft_loads_its_adapter(compose, whisper_base, tmp_path):
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    cfg = compose("recipe=whisper_finetune", f"model.pretrained={whisper_base}", LORA, "trainer.max_steps=3",
                  "task.optimizer.lr=1e-2", "task.warmup_steps=0", "logger=none",
                  "trainer.check_val_every_n_epoch=100", output_dir=tmp_path / "run")
    train(cfg)
    exported = tmp_path / "run" / "exported"
    before, after = load_file(whisper_base / "model.safetensors"), load_file(exported / "model.safetensors")
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    targets = {name for name in before if name.endswith(("q_proj.weight", "v_proj.weight"))}
    assert changed == targets  # biases, norms, embeddings and every other projection untouched

    adapter = exported / "adapter"
    assert {PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME} <= {path.name for path in adapter.iterdir()}
    ours, tokenizer, features = load_bundle(exported)
    input_features, frame_mask = features([torch.randn(16000) * 0.1, torch.randn(24000) * 0.1])
    decoder_input_ids = torch.tensor([list(tokenizer.prefix_ids) + tokenizer.encode("the cat sleeps")] * 2)
    base = transformers.WhisperForConditionalGeneration.from_pretrained(whisper_base).eval()
    with torch.no_grad():
        expected = ours.eval()(input_features, frame_mask, decoder_input_ids, None)
        unadapted = base(input_features=input_features, decoder_input_ids=decoder_input_ids).logits
        with_adapter = peft.PeftModel.from_pretrained(base, adapter).eval()  # injects the adapters into `base`
        actual = with_adapter(input_features=input_features, decoder_input_ids=decoder_input_ids).logits
    assert (actual - expected).abs().max() < 1e-4
    assert (unadapted - expected).abs().max() > 1e-3  # the adapters are what makes them agree
