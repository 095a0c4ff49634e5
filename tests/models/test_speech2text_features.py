import json

import numpy as np
import pytest
import torch

from speechtrain.models.speech2text.features import Speech2TextFeatureExtractor

transformers = pytest.importorskip("transformers")

LENGTHS = (16000, 24123, 7200, 401 + 160 * 7)  # samples: 1 s, an odd length, 0.45 s, 8 frames


def waveforms(seed=0):
    """Tone + noise at several lengths: every mel channel varies, so the variance normalisation is defined."""
    generator = torch.Generator().manual_seed(seed)
    time = torch.arange(max(LENGTHS)) / 16000
    return [
        0.3 * torch.sin(2 * np.pi * (200 + 100 * i) * time[:n]) + 0.05 * torch.randn(n, generator=generator)
        for i, n in enumerate(LENGTHS)
    ]


def test_padded_batch_equals_transformers():
    waves = waveforms()
    features, frame_mask = Speech2TextFeatureExtractor()(waves)
    reference = transformers.Speech2TextFeatureExtractor()(
        [w.numpy() for w in waves], sampling_rate=16000, padding=True, return_tensors="pt", return_attention_mask=True
    )
    frames = [1 + (n - 400) // 160 for n in LENGTHS]
    assert features.shape == (4, max(frames), 80) and features.dtype == torch.float32
    assert frame_mask.dtype == torch.bool and frame_mask.sum(dim=1).tolist() == frames
    assert torch.equal(frame_mask, reference.attention_mask.bool())
    difference = (features - reference.input_features).abs().max().item()
    print(f"filterbanks vs transformers: max abs diff {difference:.2e}")
    assert difference < 1e-3
    assert (features[~frame_mask] == 0).all()  # padded frames hold padding_value
    valid = features[0, : frames[0]]  # normalised per utterance over its own frames
    torch.testing.assert_close(valid.mean(dim=0), torch.zeros(80), atol=1e-4, rtol=0)
    torch.testing.assert_close(valid.std(dim=0, unbiased=False), torch.ones(80), atol=1e-3, rtol=0)


def test_unnormalised_and_mean_only_options_equal_transformers():
    waves = waveforms(seed=1)[:2]
    for options in ({"do_ceptral_normalize": False}, {"normalize_vars": False}):
        features, _ = Speech2TextFeatureExtractor(**options)(waves)
        reference = transformers.Speech2TextFeatureExtractor(**options)(
            [w.numpy() for w in waves], sampling_rate=16000, padding=True, return_tensors="pt"
        )
        assert (features - reference.input_features).abs().max() < 1e-3, options


def test_each_utterance_is_independent_of_the_batch():
    waves = waveforms()
    extractor = Speech2TextFeatureExtractor(num_mel_bins=40, feature_size=40)
    batch, frame_mask = extractor(waves)
    alone, _ = extractor([waves[2]])
    torch.testing.assert_close(batch[2, : alone.shape[1]], alone[0])
    assert batch.shape[2] == 40 and frame_mask[2].sum() == alone.shape[1]


def test_silence_gives_finite_features():
    features, _ = Speech2TextFeatureExtractor()([torch.zeros(8000), waveforms()[0]])
    assert torch.isfinite(features).all()


def test_bad_waveforms_are_named():
    extractor = Speech2TextFeatureExtractor()
    with pytest.raises(ValueError, match="waveform 1 has 399 samples"):
        extractor([torch.zeros(1000), torch.zeros(399)])
    with pytest.raises(ValueError, match=r"waveform 0 has shape \(2, 1000\)"):
        extractor([torch.zeros(2, 1000)])
    with pytest.raises(ValueError, match="empty list"):
        extractor([])
    with pytest.raises(ValueError, match="num_mel_bins"):
        Speech2TextFeatureExtractor(feature_size=80, num_mel_bins=40)


def test_preprocessor_config_round_trips_with_transformers(tmp_path):
    ours = Speech2TextFeatureExtractor(num_mel_bins=40, feature_size=40, normalize_vars=False)
    ours.save_pretrained(tmp_path / "ours")
    theirs = transformers.Speech2TextFeatureExtractor.from_pretrained(tmp_path / "ours")
    assert (theirs.num_mel_bins, theirs.normalize_vars, theirs.sampling_rate) == (40, False, 16000)
    theirs.save_pretrained(tmp_path / "theirs")
    loaded = Speech2TextFeatureExtractor.from_pretrained(tmp_path / "theirs")
    assert loaded.to_dict() == ours.to_dict()
    assert not hasattr(loaded, "chunk_length")  # no fixed window: the data module and transcriber cope

    (tmp_path / "whisper").mkdir()
    (tmp_path / "whisper" / "preprocessor_config.json").write_text(
        json.dumps({"feature_extractor_type": "WhisperFeatureExtractor"})
    )
    with pytest.raises(ValueError, match="expected 'Speech2TextFeatureExtractor'"):
        Speech2TextFeatureExtractor.from_pretrained(tmp_path / "whisper")
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        Speech2TextFeatureExtractor.from_pretrained(tmp_path / "nowhere")


def test_data_module_accepts_an_extractor_without_chunk_length(fake_tokenizer):
    from speechtrain.data.datamodule import AsrDataModule
    from speechtrain.train import BUNDLED_DATA_DIR

    module = AsrDataModule(
        train={"format": "ljspeech", "path": str(BUNDLED_DATA_DIR / "mini")}, val=None, tokenizer=fake_tokenizer,
        feature_extractor=Speech2TextFeatureExtractor(), max_batch_seconds=40.0, max_duration=20.0,
        max_label_tokens=100, val_fraction=0.1,
    )
    module.setup()
    batch = next(iter(module.train_dataloader()))
    assert batch["input_features"].shape[2] == 80  # frames first
    assert batch["attention_mask"].shape == batch["input_features"].shape[:2]
