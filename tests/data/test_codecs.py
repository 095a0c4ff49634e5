import math

import pytest
import torch
from tiny_tokenizers import one_torch_thread, tiny_codec  # noqa: F401 (an autouse fixture)

from speechtrain.data.codecs import EncodecCodec


@pytest.fixture(scope="module")
def codec() -> EncodecCodec:
    return tiny_codec()


def test_random_full_size_codec_round_trip():
    """The default: the official architecture with random weights. 0.25 s at 16 kHz -> 19 frames of 8 levels."""
    codec = EncodecCodec()
    assert (codec.sample_rate, codec.frame_rate, codec.num_levels, codec.codebook_size) == (24000, 75, 8, 1024)
    waveform = 0.3 * torch.sin(torch.linspace(0, 200 * math.pi, 4000)) + 0.05 * torch.randn(4000)
    codes = codec.encode(waveform, 16000)
    assert codes.dtype == torch.long and codes.shape == (19, 8)  # ceil(6000 / 320)
    assert codes.min() >= 0 and codes.max() < 1024
    assert codes.unique().numel() > 8  # random codebooks, not the all-zero ones encodec starts from
    audio = codec.decode(codes)
    assert audio.shape == (19 * 320,) and torch.isfinite(audio).all()


def test_batched_decode_matches_one_by_one(codec):
    codes = codec.encode(torch.randn(9600) * 0.1, 24000)
    assert codes.unique().numel() > 8
    batch = codec.decode(torch.stack([codes, codes.flip(0)]))
    assert batch.shape == (2, 30 * 320)
    torch.testing.assert_close(batch[0], codec.decode(codes), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batch[1], codec.decode(codes.flip(0)), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("samples", [1, 320, 321, 24000, 24001])
def test_frame_count_is_ceil_of_samples_over_hop(codec, samples):
    codes = codec.encode(torch.randn(samples) * 0.1, 24000)
    assert codes.shape == (math.ceil(samples / 320), 8)


def test_resampling_gives_the_frame_count_of_the_24khz_length(codec):
    assert codec.encode(torch.randn(22050) * 0.1, 22050).shape == (75, 8)


def test_decode_rejects_bad_codes(codec):
    with pytest.raises(ValueError, match=r"\[0, 1024\).*1024\]"):
        codec.decode(torch.full((4, 8), 1024))
    with pytest.raises(ValueError, match="integer tensor"):
        codec.decode(torch.zeros(4, 8))
    with pytest.raises(ValueError, match="33 levels"):
        codec.decode(torch.zeros(4, 33, dtype=torch.long))
    assert codec.decode(torch.zeros(1, 4, 2, dtype=torch.long)).shape == (1, 4 * 320)  # Bark's coarse levels


def test_settings_and_bad_arguments(codec):
    assert codec.settings() == {"name": "custom:tiny", "sample_rate": 24000, "frame_rate": 75, "num_levels": 8,
                                "codebook_size": 1024, "bandwidth": 6.0, "checkpoint": None}
    with pytest.raises(ValueError, match="bandwidth=5"):
        EncodecCodec(bandwidth=5.0, model=tiny_codec().model)
    with pytest.raises(ValueError, match="sample_rate=48000"):
        EncodecCodec(sample_rate=48000)


def test_checkpoint_loads_weights_and_names_bad_files(tmp_path, codec):
    checkpoint = tmp_path / "encodec_24khz-d7cc33bc.th"
    torch.save(codec.model.state_dict(), checkpoint)
    other = tiny_codec().model
    torch.nn.init.normal_(other.encoder.model[0].conv.conv.weight_v)  # differ from the saved weights
    loaded = EncodecCodec(checkpoint=checkpoint, model=other)
    waveform = torch.randn(4800) * 0.1
    assert torch.equal(loaded.encode(waveform, 24000), codec.encode(waveform, 24000))
    assert loaded.settings()["checkpoint"] == str(checkpoint.resolve())

    with pytest.raises(FileNotFoundError, match="missing.th"):
        EncodecCodec(checkpoint=tmp_path / "missing.th", model=tiny_codec().model)
    wrong = tmp_path / "wrong.th"
    torch.save({"decoder.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="wrong.th is not an encodec_24khz"):
        EncodecCodec(checkpoint=wrong, model=tiny_codec().model)


BATCHED_LENGTHS = [1921, 2241, 9600, 9601, 12345, 24017]  # 24 kHz: the shortest batched (7 frames), partial frames


def noise(lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(length, generator=generator) for length in lengths]


def test_batched_codes_are_the_codes_of_one_at_a_time(codec):
    """Float rounding in a batch could flip a code where two codebook entries are as close; none flips here, for
    waveforms that batch, waveforms too short to batch (encoded alone) and mixed sample rates."""
    waveforms = noise([1, 319, 1920, *BATCHED_LENGTHS])
    batched = codec.encode_batch(waveforms, 24000)
    for waveform, codes in zip(waveforms, batched):
        assert codes.dtype == torch.long and torch.equal(codes, codec.encode(waveform, 24000))
    mixed = noise([22050, 16000, 9000], seed=1)
    rates = [22050, 16000, 24000]
    for waveform, rate, codes in zip(mixed, rates, codec.encode_batch(mixed, rates)):
        assert torch.equal(codes, codec.encode(waveform, rate))
    with pytest.raises(ValueError, match="3 waveforms but 2 sample rates"):
        codec.encode_batch(mixed, rates[:2])


def test_batched_embeddings_differ_from_one_at_a_time_by_float_rounding_only(codec):
    """What can make a batched code differ: each utterance's encoder output is within 1e-5 of its scale of the
    encoder's on it alone, and the same batch gives the same bits every time."""
    waveforms = noise(BATCHED_LENGTHS)
    embeddings, frames = codec.batch_embeddings(waveforms)
    assert frames == [math.ceil(length / 320) for length in BATCHED_LENGTHS]
    assert torch.equal(codec.batch_embeddings(waveforms)[0], embeddings)
    for row, (waveform, count) in enumerate(zip(waveforms, frames)):
        with torch.no_grad():
            alone = codec.model.encoder(waveform[None, None])[0]  # [dimension, frames]
        assert (embeddings[row, :, :count] - alone).abs().max() <= 1e-5 * alone.abs().max()
    with pytest.raises(ValueError, match="at least 1921 samples"):
        codec.batch_embeddings(noise([1920, 9600]))


def test_random_full_size_codec_batches_within_rounding():
    codec = EncodecCodec()
    waveforms = noise([4000, 7777, 6400], seed=2)  # at 16 kHz
    for waveform, codes in zip(waveforms, codec.encode_batch(waveforms, 16000)):
        assert torch.equal(codes, codec.encode(waveform, 16000))
    resampled = [codec.mono_at_model_rate(waveform, 16000) for waveform in waveforms]
    embeddings, frames = codec.batch_embeddings(resampled)
    for row, (waveform, count) in enumerate(zip(resampled, frames)):
        with torch.no_grad():
            alone = codec.model.encoder(waveform[None, None])[0]
        assert (embeddings[row, :, :count] - alone).abs().max() <= 1e-5 * alone.abs().max()
