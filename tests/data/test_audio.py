import numpy as np
import pytest
import soundfile as sf
import torch

from speechtrain.data.audio import AudioError, audio_info, load_audio


def dominant_frequency(waveform: torch.Tensor, sample_rate: int) -> float:
    spectrum = torch.fft.rfft(waveform * torch.hann_window(len(waveform))).abs()
    return float(spectrum.argmax()) * sample_rate / len(waveform)


def test_mono_file_loads_unchanged(tmp_path, make_wav):
    path = make_wav(tmp_path / "a.wav", 0.5)
    expected, _ = sf.read(path, dtype="float32")
    audio = load_audio(path, 16000)
    assert audio.dtype == torch.float32 and audio.shape == (8000,)
    assert torch.equal(audio, torch.from_numpy(expected))


def test_stereo_file_loads_as_mean_of_channels(tmp_path, make_wav):
    path = make_wav(tmp_path / "stereo.wav", 0.25, frequencies=(440.0, 1000.0))
    channels, _ = sf.read(path, dtype="float32")
    audio = load_audio(path, 16000)
    assert audio.shape == (4000,)
    torch.testing.assert_close(audio, torch.from_numpy((channels[:, 0] + channels[:, 1]) / 2))
    assert audio_info(path).channels == 2


def test_44k_file_is_resampled_to_the_right_length_and_pitch(tmp_path, make_wav):
    path = make_wav(tmp_path / "cd.wav", 1.0, sample_rate=44100, frequencies=(1000.0,))
    audio = load_audio(path, 16000)
    assert audio.shape == (16000,)
    assert dominant_frequency(audio, 16000) == pytest.approx(1000.0, abs=2.0)
    reference = 0.5 * torch.sin(2 * torch.pi * 1000.0 * torch.arange(16000) / 16000)
    assert (audio - reference)[200:-200].abs().max() < 2e-3  # edges ring from the resampling filter


def test_bytes_load_like_the_file(tmp_path, make_wav):
    path = make_wav(tmp_path / "a.flac", 0.3, sample_rate=22050, subtype="PCM_16")
    data = path.read_bytes()
    assert torch.equal(load_audio(data, 16000), load_audio(path, 16000))
    info = audio_info(data)
    assert (info.sample_rate, info.channels) == (22050, 1)
    assert info.duration == pytest.approx(0.3, abs=1e-4)


def test_audio_info_reads_the_header(tmp_path, make_wav):
    info = audio_info(make_wav(tmp_path / "a.wav", 1.25, sample_rate=8000))
    assert (info.duration, info.sample_rate, info.channels) == (1.25, 8000, 1)


@pytest.mark.parametrize("reader", [audio_info, lambda path: load_audio(path, 16000)])
def test_bad_files_raise_audio_error_starting_with_the_path(tmp_path, reader):
    missing = tmp_path / "missing.wav"
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio" * 100)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    no_samples = tmp_path / "no_samples.wav"
    sf.write(no_samples, np.zeros(0, dtype=np.float32), 16000)
    expected = {missing: "not found", garbage: "cannot decode", empty: "empty", no_samples: "no samples"}
    for path, reason in expected.items():
        with pytest.raises(AudioError) as caught:
            reader(path)
        assert str(caught.value).startswith(f"{path}: ")
        assert reason in str(caught.value)
        assert isinstance(caught.value, ValueError) and caught.value.path == str(path)


def test_non_finite_samples_are_rejected(tmp_path):
    path = tmp_path / "nan.wav"
    sf.write(path, np.array([0.0, np.nan, 0.1], dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(path, 16000)


def test_bad_bytes_are_named_by_the_given_name():
    with pytest.raises(AudioError, match=r"^hub/clip\.wav: cannot decode"):
        load_audio(b"garbage" * 50, 16000, name="hub/clip.wav")
    with pytest.raises(AudioError, match="empty"):
        audio_info(b"", name="x")
