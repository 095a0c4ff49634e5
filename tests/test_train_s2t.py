"""Speech2Text end to end: compose the S2T recipes, train on the mini corpus, export, load in transformers."""

import pytest
import torch

from speechtrain.train import BUNDLED_DATA_DIR, train

FAST = ["trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1", "logger=csv", "trainer.log_every_n_steps=1",
        "task.max_new_tokens=8"]
MINI = BUNDLED_DATA_DIR / "mini"


@pytest.mark.slow
def test_tiny_speech2text_overfits_the_mini_corpus(compose, tmp_path):
    """The s2t_mini recipe's own settings; training-set CER must fall below 0.05 (it starts near 1.0)."""
    metrics = train(compose("recipe=s2t_mini", "logger=csv", output_dir=tmp_path))
    assert metrics["val/cer"] < 0.05, metrics


def test_exported_checkpoint_loads_in_transformers_with_same_logits(train_and_export):
    out, (ours, tokenizer, features), (theirs, hf_tokenizer, hf_features), state = train_and_export(
        "s2t_mini", *FAST, transformers_classes=("Speech2TextForConditionalGeneration", "Speech2TextTokenizer",
                                                 "Speech2TextFeatureExtractor"))
    assert "speech_to_text" in (out / "README.md").read_text()

    generator = torch.Generator().manual_seed(0)
    waveforms = [torch.randn(16000, generator=generator) * 0.1, torch.randn(9000, generator=generator) * 0.1]
    input_features, frame_mask = features(waveforms)
    reference = hf_features([w.numpy() for w in waveforms], sampling_rate=16000, padding=True, return_tensors="pt")
    assert (input_features - reference.input_features).abs().max() < 1e-3
    assert torch.equal(frame_mask, reference.attention_mask.bool())

    text = "The cat sleeps by the warm window."
    text_ids = tokenizer.encode(text)
    assert hf_tokenizer.encode(text, add_special_tokens=False) == text_ids
    decoder_input_ids = torch.tensor([tokenizer.prefix_ids + text_ids] * 2)
    with torch.no_grad():
        expected = theirs(input_features=input_features, attention_mask=frame_mask.long(),
                          decoder_input_ids=decoder_input_ids).logits
        actual = ours(input_features, frame_mask, decoder_input_ids, None)
    difference = (actual - expected).abs().max().item()
    print(f"exported Speech2Text: ours vs transformers logits max abs diff {difference:.2e}")
    assert difference < 1e-4
    torch.testing.assert_close(theirs.model.encoder.conv.conv_layers[0].weight,
                               state["model.model.encoder.conv.conv_layers.0.weight"])


def test_finetune_recipe_starts_from_a_hugging_face_folder_and_transcribes(finetune_from_export, capsys):
    from speechtrain.cli.transcribe import main as transcribe

    cfg, tuned = finetune_from_export(
        "s2t_mini", "s2t_finetune", f"data.train.path={MINI}", *FAST, base_overrides=FAST,
        moved_weight="model.encoder.conv.conv_layers.0.weight",
        kept_files=("sentencepiece.bpe.model", "vocab.json", "tokenizer_config.json", "preprocessor_config.json"))
    assert cfg.data.max_label_tokens == 128  # read from the folder's config.json

    wav = MINI / "wavs" / "mini_0001.wav"
    with pytest.raises(SystemExit) as exit_info:  # no fixed window: the whole file goes in at once
        transcribe([str(tuned), str(wav), "--beams", "2"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"{wav}\t")


def test_librispeech_recipe_composes_to_fairseq_s2t_transformer_s(compose, tmp_path, fake_tokenizer):
    import hydra

    cfg = compose("recipe=s2t_librispeech", "+model.config.vocab_size=10000", output_dir=tmp_path)
    assert cfg.tokenizer.vocab_size == 10000 and cfg.tokenizer.lowercase
    assert cfg.task.lr_decay == "inverse_sqrt" and cfg.task.warmup_steps == 10000
    augment = hydra.utils.instantiate(cfg.task.spec_augment)
    assert (augment.freq_mask_n, augment.freq_mask_f, augment.time_mask_n, augment.time_mask_t) == (2, 27, 2, 100)
    features = hydra.utils.instantiate(cfg.features)
    assert features.num_mel_bins == 80
    model = hydra.utils.instantiate(cfg.model, tokenizer=fake_tokenizer)
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert 29 < millions < 31, millions  # fairseq reports 30 M for s2t_transformer_s on LibriSpeech
