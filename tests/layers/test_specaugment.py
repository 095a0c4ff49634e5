import numpy as np
import pytest
import torch

from speechtrain.layers.specaugment import SpecAugment, compute_mask_indices

transformers = pytest.importorskip("transformers")
from transformers.models.whisper.modeling_whisper import _compute_mask_indices  # noqa: E402


@pytest.mark.parametrize("prob,length,min_masks", [(0.05, 10, 2), (0.3, 4, 0), (0.9, 7, 1), (0.0, 3, 2)])
def test_mask_indices_equal_transformers(prob, length, min_masks):
    frame_mask = torch.ones(4, 120, dtype=torch.long)
    frame_mask[1, 80:] = 0
    frame_mask[3, 9:] = 0  # shorter than a few spans
    for seed in range(5):
        np.random.seed(seed)
        ours = compute_mask_indices((4, 120), prob, length, attention_mask=frame_mask, min_masks=min_masks)
        np.random.seed(seed)
        theirs = _compute_mask_indices((4, 120), prob, length, attention_mask=frame_mask, min_masks=min_masks)
        np.testing.assert_array_equal(ours, theirs)


def test_masks_stay_inside_each_rows_length():
    frame_mask = torch.zeros(3, 200, dtype=torch.long)
    for row, length in enumerate((200, 120, 40)):
        frame_mask[row, :length] = 1
    np.random.seed(0)
    mask = compute_mask_indices((3, 200), 0.5, 10, attention_mask=frame_mask, min_masks=2)
    assert mask[1, 120:].sum() == 0 and mask[2, 40:].sum() == 0
    assert mask[0].sum() >= 20  # at least min_masks spans


def test_whisper_layout_matches_transformers_masking():
    from transformers import WhisperConfig, WhisperModel

    config = WhisperConfig(
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        num_mel_bins=16, max_source_positions=30, vocab_size=50, pad_token_id=0, bos_token_id=1, eos_token_id=1,
        decoder_start_token_id=2, apply_spec_augment=True,
        mask_time_prob=0.2, mask_time_length=5, mask_time_min_masks=2,
        mask_feature_prob=0.3, mask_feature_length=3, mask_feature_min_masks=1,
    )
    hf = WhisperModel(config).train()
    ours = SpecAugment(0.2, 5, 2, 0.3, 3, 1, time_dim=2)
    features = torch.randn(3, 16, 60) + 5.0
    np.random.seed(7)
    expected = hf._mask_input_features(features.clone())
    np.random.seed(7)
    actual = ours(features)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    assert (actual == 0).any() and not (features == 0).any()


def test_time_first_layout_masks_frames_across_all_features():
    augment = SpecAugment(mask_time_prob=0.5, mask_time_length=4, mask_time_min_masks=1, time_dim=1)
    features = torch.ones(2, 50, 8)
    np.random.seed(1)
    out = augment(features)
    zero_frames = (out == 0).all(dim=2)  # a masked frame is masked over every feature
    assert zero_frames.any()
    assert ((out == 0).any(dim=2) == zero_frames).all()
    assert features.eq(1).all()  # input untouched


def test_bad_probability_is_rejected():
    with pytest.raises(ValueError, match="mask_time_prob"):
        SpecAugment(mask_time_prob=1.5)
