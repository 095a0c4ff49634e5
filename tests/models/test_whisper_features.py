import json

import numpy as np
import pytest
import torch
import transformers

from speechtrain.models.feature_extraction import FeatureExtractor
from speechtrain.models.whisper.features import WhisperFeatureExtractor


def signals(sample_rate: int, max_seconds: float) -> list[np.ndarray]:
    """Random and speech-like signals of different lengths (some not a multiple of the hop)."""
    rng = np.random.default_rng(0)
    t = lambda seconds: np.arange(int(seconds * sample_rate)) / sample_rate
    syllables = np.sin(2 * np.pi * 4 * t(2.0)) ** 2  # 4 Hz envelope over harmonics: a voiced "speech" stand-in
    voiced = syllables * sum(np.sin(2 * np.pi * 120 * k * t(2.0)) / k for k in range(1, 20))
    chirp = np.sin(2 * np.pi * (100 + 2000 * t(1.5)) * t(1.5))
    burst = np.concatenate([np.zeros(sample_rate // 2), rng.standard_normal(sample_rate // 4)])
    waves = [
        0.1 * rng.standard_normal(int(3.3 * sample_rate) + 37),
        0.3 * voiced,
        0.8 * chirp,
        burst,
        np.zeros(1234),
        np.full(1601, 1e-4),
        0.01 * rng.standard_normal(int(max_seconds * sample_rate)),  # exactly one full chunk
        0.5 * np.sin(2 * np.pi * 440 * t(0.01)),
    ]
    return [w.astype(np.float32) for w in waves]


@pytest.mark.parametrize("feature_size, chunk_length", [(80, 30), (128, 30), (80, 4)])
def test_matches_transformers_on_a_batch(feature_size, chunk_length):
    ours = WhisperFeatureExtractor(feature_size=feature_size, chunk_length=chunk_length)
    theirs = transformers.WhisperFeatureExtractor(feature_size=feature_size, chunk_length=chunk_length)
    waves = signals(16000, chunk_length)
    expected = theirs(waves, sampling_rate=16000, return_tensors="pt", return_attention_mask=True)
    features, frame_mask = ours([torch.from_numpy(w) for w in waves])
    assert features.shape == (len(waves), feature_size, chunk_length * 100)
    assert (features - expected["input_features"]).abs().max() < 1e-4
    assert torch.equal(frame_mask, expected["attention_mask"].bool())
    assert frame_mask.sum(1).tolist() == [-(-len(w) // 160) for w in waves]


def test_each_utterance_is_clamped_to_its_own_maximum():
    quiet, loud = torch.full((16000,), 1e-3), torch.randn(16000)
    batch, _ = WhisperFeatureExtractor(chunk_length=2)([quiet, loud])
    alone, _ = WhisperFeatureExtractor(chunk_length=2)([quiet])
    torch.testing.assert_close(batch[0], alone[0])


def test_longer_than_chunk_raises_naming_the_length():
    extractor = WhisperFeatureExtractor(chunk_length=1)
    with pytest.raises(ValueError, match=r"waveform 1 has 16001 samples \(1\.00 s\)"):
        extractor([torch.zeros(10), torch.zeros(16001)])
    with pytest.raises(ValueError, match="1-D"):
        extractor([torch.zeros(2, 10)])


def test_saved_config_loads_in_transformers_and_back(tmp_path):
    ours = WhisperFeatureExtractor(feature_size=128, chunk_length=10, hop_length=160)
    ours.save_pretrained(tmp_path)
    theirs = transformers.WhisperFeatureExtractor.from_pretrained(tmp_path)
    assert (theirs.feature_size, theirs.chunk_length, theirs.n_samples) == (128, 10, 160000)
    wave = signals(16000, 10)[0]
    reloaded = WhisperFeatureExtractor.from_pretrained(tmp_path)
    expected = theirs([wave], sampling_rate=16000, return_tensors="pt")["input_features"]
    assert (reloaded([torch.from_numpy(wave)])[0] - expected).abs().max() < 1e-4


def test_loads_a_config_that_transformers_saved(tmp_path):
    transformers.WhisperFeatureExtractor(feature_size=128, padding_value=0.5).save_pretrained(tmp_path)
    loaded = WhisperFeatureExtractor.from_pretrained(tmp_path)
    assert (loaded.feature_size, loaded.padding_value, loaded.n_samples) == (128, 0.5, 480000)
    assert isinstance(loaded, FeatureExtractor)


def test_from_pretrained_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        WhisperFeatureExtractor.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"feature_extractor_type": "Wav2Vec2"}))
    with pytest.raises(ValueError, match="Wav2Vec2"):
        WhisperFeatureExtractor.from_pretrained(tmp_path)
