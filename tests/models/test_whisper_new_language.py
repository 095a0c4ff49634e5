"""A language the checkpoint has no token for (`tokenizer.add_languages=[yue] tokenizer.language=yue`): the
embeddings grow by one row, the token is recorded in the tokenizer and generation config, and transformers loads the
export and generates with it."""

import json

import pytest
import torch
from safetensors.torch import load_file

from speechtrain.hub import save_bundle
from speechtrain.train import build, train

transformers = pytest.importorskip("transformers")


@pytest.fixture
def multilingual_base(compose, tmp_path):
    """The default recipe's untrained Whisper with a multilingual (en, de) tokenizer, saved as a folder."""
    torch.manual_seed(0)
    task, _ = build(compose("recipe=whisper_mini", "tokenizer.multilingual=true", "+tokenizer.languages=[en,de]",
                            output_dir=tmp_path / "base_run"))
    save_bundle(tmp_path / "base", task.model, task.tokenizer, task.feature_extractor)
    return tmp_path / "base"


def test_a_new_language_token_trains_exports_and_generates_in_transformers(compose, multilingual_base, tmp_path):
    base_vocab = json.loads((multilingual_base / "config.json").read_text())["vocab_size"]
    cfg = compose("recipe=whisper_finetune", f"model.pretrained={multilingual_base}", "tokenizer.add_languages=[yue]",
                  "tokenizer.language=yue", "trainer.max_steps=2", "logger=none", "trainer.check_val_every_n_epoch=100",
                  output_dir=tmp_path / "run")
    task, _ = build(cfg)
    yue = task.tokenizer.generation_config["lang_to_id"]["<|yue|>"]
    assert yue == base_vocab and task.model.config.vocab_size == base_vocab + 1
    assert task.tokenizer.prefix_ids[1] == yue
    languages = [task.tokenizer.generation_config["lang_to_id"][f"<|{code}|>"] for code in ("en", "de")]
    embeddings = task.model.model.decoder.embed_tokens.weight
    torch.testing.assert_close(embeddings[yue], embeddings[languages].mean(0))

    train(cfg)
    exported = tmp_path / "run" / "exported"
    assert load_file(exported / "model.safetensors")["model.decoder.embed_tokens.weight"].shape[0] == base_vocab + 1
    generation = json.loads((exported / "generation_config.json").read_text())
    assert generation["lang_to_id"]["<|yue|>"] == yue and generation["language"] == "yue"
    hf_tokenizer = transformers.WhisperTokenizerFast.from_pretrained(exported)
    assert hf_tokenizer.convert_tokens_to_ids("<|yue|>") == yue

    model = transformers.WhisperForConditionalGeneration.from_pretrained(exported).eval()
    features = transformers.WhisperFeatureExtractor.from_pretrained(exported)(
        [torch.randn(16000).numpy() * 0.1], sampling_rate=16000, return_tensors="pt").input_features
    generated = model.generate(features, language="<|yue|>", task="transcribe", max_new_tokens=4,
                               return_dict_in_generate=True).sequences
    prefix = task.tokenizer.prefix_ids  # <|startoftranscript|> <|yue|> <|transcribe|> <|notimestamps|>
    assert generated[0, : len(prefix)].tolist() == prefix and generated.shape[1] > len(prefix)


def test_an_english_only_checkpoint_refuses_a_new_language(compose, tmp_path):
    torch.manual_seed(0)
    task, _ = build(compose("recipe=whisper_mini", output_dir=tmp_path / "base_run"))
    save_bundle(tmp_path / "base", task.model, task.tokenizer, task.feature_extractor)
    cfg = compose("recipe=whisper_finetune", f"model.pretrained={tmp_path / 'base'}", "tokenizer.add_languages=[yue]",
                  output_dir=tmp_path / "run")
    with pytest.raises(Exception, match="English-only checkpoint has no language token in its prompt"):
        build(cfg)
