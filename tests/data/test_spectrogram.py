import numpy as np
import pytest
import torch
import torchaudio
from transformers.audio_utils import mel_filter_bank

from speechtrain.data.spectrogram import linear_spectrogram, mel_filters, mel_spectrogram, spectrogram_to_mel


def reference_linear(audio: np.ndarray, n_fft: int, hop: int, win: int) -> np.ndarray:
    """The original mel_processing.spectrogram_torch written out in float64 numpy: reflect-pad (n_fft - hop) / 2,
    frames of n_fft every hop, a periodic Hann window of win centred in n_fft, sqrt(|rfft|^2 + 1e-6)."""
    pad = (n_fft - hop) // 2
    padded = np.pad(audio, (pad, pad), mode="reflect")
    window = np.zeros(n_fft)
    window[(n_fft - win) // 2 : (n_fft - win) // 2 + win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    frames = np.stack([padded[i * hop : i * hop + n_fft] * window for i in range(1 + (len(padded) - n_fft) // hop)])
    spectrum = np.fft.rfft(frames, axis=1)  # [frames, bins]
    return np.sqrt(spectrum.real**2 + spectrum.imag**2 + 1e-6).T


def reference_filters(n_fft: int, n_mels: int, rate: int, f_min: float, f_max: float) -> np.ndarray:
    return mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=f_min,
                           max_frequency=f_max, sampling_rate=rate, norm="slaney", mel_scale="slaney").T


@pytest.fixture
def audio() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    tones = 0.3 * torch.sin(2 * torch.pi * torch.tensor([[220.0], [1375.0]]) * torch.arange(4000) / 16000)
    return tones + 0.05 * torch.randn(2, 4000, generator=generator)  # [2, 4000]


@pytest.mark.parametrize("n_fft, hop, win", [(256, 64, 256), (512, 128, 400)])
def test_linear_spectrogram_is_the_original_formula(audio, n_fft, hop, win):
    spectrogram = linear_spectrogram(audio, n_fft, hop, win)
    assert spectrogram.shape == (2, n_fft // 2 + 1, 4000 // hop) and spectrogram.dtype == torch.float32
    for row in range(2):
        expected = reference_linear(audio[row].double().numpy(), n_fft, hop, win)
        error = np.abs(spectrogram[row].double().numpy() - expected).max()
        print(f"n_fft={n_fft} hop={hop} win={win} row {row}: max abs difference {error:.1e} of {expected.max():.1f}")
        assert error < 1e-4 * expected.max()


@pytest.mark.parametrize("n_fft, n_mels, rate, f_max", [(1024, 80, 22050, None), (512, 40, 16000, 7000.0)])
def test_mel_filters_are_librosa_slaney(n_fft, n_mels, rate, f_max):
    ours = mel_filters(n_fft, n_mels, rate, 0.0, f_max).double().numpy()
    expected = reference_filters(n_fft, n_mels, rate, 0.0, rate / 2 if f_max is None else f_max)
    print(f"{n_mels} filters at {rate} Hz: max abs difference {np.abs(ours - expected).max():.2e}")
    assert ours.shape == (n_mels, n_fft // 2 + 1)
    assert np.abs(ours - expected).max() < 1e-5 * expected.max()  # float32 filters against a float64 reference


def test_mel_filters_agree_with_torchaudio():
    """Whisper's filters (n_fft=400, so 201 bins; 0-8 kHz at 16 kHz) against torchaudio's float32 ones."""
    for n_mels in (80, 128):
        reference = torchaudio.functional.melscale_fbanks(201, 0.0, 8000.0, n_mels, 16000, "slaney", "slaney")
        assert (mel_filters(400, n_mels, 16000, 0.0, 8000.0) - reference.T).abs().max() < 1e-6


def test_mel_spectrogram_is_log_of_clamped_filtered_magnitudes(audio):
    mel = mel_spectrogram(audio, 512, 40, 16000, 128, 512, f_min=0.0, f_max=8000.0)
    assert mel.shape == (2, 40, 4000 // 128) and mel.dtype == torch.float32
    filters = reference_filters(512, 40, 16000, 0.0, 8000.0)
    for row in range(2):
        expected = np.log(np.maximum(filters @ reference_linear(audio[row].double().numpy(), 512, 128, 512), 1e-5))
        assert np.abs(mel[row].double().numpy() - expected).max() < 1e-4
    floor = spectrogram_to_mel(torch.zeros(1, 257, 3), 512, 40, 16000)  # log(clamp(0, min=1e-5))
    assert torch.allclose(floor, torch.full((1, 40, 3), np.log(1e-5), dtype=torch.float32))
    spectrogram = linear_spectrogram(audio, 512, 128, 512)
    assert torch.equal(spectrogram_to_mel(spectrogram, 512, 40, 16000, 0.0, 8000.0), mel)


@pytest.mark.parametrize("samples", [1000, 1023, 1024, 1025, 1300])
def test_frames_are_samples_over_hop(samples):
    assert linear_spectrogram(torch.randn(1, samples), 1024, 256, 1024).shape == (1, 513, samples // 256)
    assert mel_spectrogram(torch.randn(3, 1, samples), 1024, 80, 22050, 256, 1024).shape == (3, 80, samples // 256)


def test_float32_under_autocast(audio):
    plain = mel_spectrogram(audio, 256, 32, 16000, 64, 256)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = mel_spectrogram(audio.bfloat16(), 256, 32, 16000, 64, 256)
        linear = linear_spectrogram(audio, 256, 64, 256)
    assert autocast.dtype == linear.dtype == torch.float32
    assert (autocast - plain).abs().max() < 0.05  # only the bfloat16 rounding of the input remains
    assert torch.equal(linear, linear_spectrogram(audio, 256, 64, 256))


def test_bad_sizes_are_explained():
    with pytest.raises(ValueError, match="even difference"):
        linear_spectrogram(torch.randn(1, 2000), 1024, 255, 1024)
    with pytest.raises(ValueError, match="win_length=2048"):
        linear_spectrogram(torch.randn(1, 2000), 1024, 256, 2048)
    with pytest.raises(ValueError, match="too short to reflect-pad by 384"):
        linear_spectrogram(torch.randn(1, 300), 1024, 256, 1024)
    with pytest.raises(ValueError, match=r"\[batch, samples\]"):
        linear_spectrogram(torch.randn(2000), 1024, 256, 1024)
