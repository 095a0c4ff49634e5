"""The VITS training pass: shapes, finiteness, gradients, alignment and segment bookkeeping."""

import math

import pytest
import torch

from speechtrain.layers.alignment import monotonic_alignment_search
from speechtrain.models.vits import VitsConfig, VitsModel, slice_segments
from speechtrain.models.vits.duration_predictor import run_flows
from speechtrain.models.vits.modeling import durations_to_alignment, prior_log_likelihood, random_segment_starts

TINY = dict(
    vocab_size=20, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, ffn_dim=64, flow_size=16,
    spectrogram_bins=9, upsample_initial_channel=32, upsample_rates=[2, 2], upsample_kernel_sizes=[4, 4],
    resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]], duration_predictor_filter_channels=32,
    prior_encoder_num_flows=2, prior_encoder_num_wavenet_layers=2, posterior_encoder_num_wavenet_layers=2,
    duration_predictor_num_flows=2, depth_separable_num_layers=2, pad_token_id=0,
    layerdrop=0.0,  # every layer runs, so every parameter must get a gradient
)
COMPONENTS = ("text_encoder", "posterior_encoder", "flow", "duration_predictor", "decoder")


def model(seed=0, **overrides):
    torch.manual_seed(seed)
    return VitsModel(VitsConfig(**{**TINY, **overrides}))


def batch(speakers=False):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 20, (2, 7), generator=generator)
    attention_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    spectrogram = torch.randn(2, 9, 40, generator=generator).abs()
    spectrogram_mask = torch.tensor([[1] * 40, [1] * 23 + [0] * 17])
    extra = {"speaker_id": torch.tensor([0, 2])} if speakers else {}
    return dict(input_ids=ids, attention_mask=attention_mask, spectrogram=spectrogram,
                spectrogram_mask=spectrogram_mask, **extra)


def kl_loss(out):
    """VITS's KL term, enough here to send gradients through every output the training task uses."""
    kl = out["logs_p"] - out["logs_q"] - 0.5 + 0.5 * (out["z_p"] - out["m_p"]) ** 2 * torch.exp(-2 * out["logs_p"])
    return torch.sum(kl * out["z_mask"]) / out["z_mask"].sum()


@pytest.mark.parametrize("stochastic", [True, False], ids=["stochastic_durations", "deterministic_durations"])
@pytest.mark.parametrize("speakers", [False, True], ids=["one_speaker", "three_speakers"])
def test_forward_train_shapes_losses_and_gradients(stochastic, speakers):
    vits = model(use_stochastic_duration_prediction=stochastic,
                 **(dict(num_speakers=3, speaker_embedding_size=8) if speakers else {})).train()
    out = vits.forward_train(**batch(speakers), segment_size=8)

    assert out["waveform"].shape == (2, 1, 8 * vits.hop_length)
    assert out["ids_slice"].shape == (2,) and out["ids_slice"].dtype == torch.long
    assert out["alignment"].shape == (2, 7, 40)
    assert out["text_mask"].shape == (2, 1, 7) and out["z_mask"].shape == (2, 1, 40)
    for key in ("z", "z_p", "m_p", "logs_p", "m_q", "logs_q"):
        assert out[key].shape == (2, 16, 40), key
    for key, value in out.items():
        assert torch.isfinite(value).all(), key
    assert out["duration_loss"].dim() == 0 and out["duration_loss"] > 0
    print(f"stochastic={stochastic} speakers={speakers}: duration loss {out['duration_loss'].item():.3f}, "
          f"KL {kl_loss(out).item():.3f}")

    (kl_loss(out) + out["duration_loss"] + out["waveform"].abs().mean()).backward()
    for component in COMPONENTS + (("embed_speaker",) if speakers else ()):
        grads = [p.grad for p in getattr(vits, component).parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), component
        assert any(g.abs().sum() > 0 for g in grads), f"no gradient reaches {component}"


def test_alignment_covers_each_frame_once_in_order():
    vits = model().eval()
    data = batch()
    out = vits.forward_train(**data, segment_size=8)
    alignment, pair_mask = out["alignment"], out["text_mask"].transpose(1, 2) * out["z_mask"]
    assert set(alignment.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(alignment * pair_mask, alignment)
    assert torch.equal(alignment.sum(1), out["z_mask"][:, 0])  # each real frame on exactly one token
    durations = alignment.sum(2)  # [B, text]
    assert torch.equal(durations > 0, out["text_mask"][:, 0] > 0)  # each real token gets at least one frame
    assert torch.equal(durations_to_alignment(durations, pair_mask), alignment)  # monotonic: a contiguous run each
    torch.testing.assert_close(out["m_p"], vits.encode_text(data["input_ids"], data["attention_mask"])[1] @ alignment)


def test_deterministic_duration_loss_is_log_duration_mse():
    vits = model(use_stochastic_duration_prediction=False).eval()
    data = batch()
    out = vits.forward_train(**data, segment_size=8)
    hidden, _, _, text_mask = vits.encode_text(data["input_ids"], data["attention_mask"])
    predicted = vits.duration_predictor.log_durations(hidden, text_mask)[:, 0]
    target = torch.log(out["alignment"].sum(2) + 1e-6) * text_mask[:, 0]
    expected = torch.sum((predicted - target) ** 2 * text_mask[:, 0]) / text_mask.sum()
    torch.testing.assert_close(out["duration_loss"], expected)


def test_stochastic_duration_flows_invert_in_synthesis_order():
    """Training runs the flows forward (affine, then ConvFlow + flip); synthesis must undo exactly that."""
    predictor = model().duration_predictor.eval()
    with torch.no_grad():  # make every flow non-trivial (they start as the identity)
        for parameter in predictor.flows.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    mask = torch.ones(2, 1, 6)
    mask[1, :, 4:] = 0
    conditioning = torch.randn(2, 32, 6) * mask
    x = torch.randn(2, 2, 6) * mask
    with torch.no_grad():
        z, log_det = run_flows(predictor.flows, x, mask, conditioning)
        recovered = predictor.reverse_flows(z, mask, conditioning)
    assert not torch.allclose(z, x, atol=1e-2)
    torch.testing.assert_close(recovered[:, :1], x[:, :1], rtol=1e-4, atol=1e-4)
    assert log_det.shape == (2,) and torch.isfinite(log_det).all()


def test_waveform_segment_is_the_decoded_latent_at_ids_slice():
    vits = model().eval()
    data = batch()
    torch.manual_seed(3)
    out = vits.forward_train(**data, segment_size=20)
    with torch.no_grad():
        full = vits.decoder(out["z"])  # [B, 1, 40 * hop]
    hop, margin = vits.hop_length, 8 * vits.hop_length  # edges differ: the convolutions see past the segment
    for row, start in enumerate(out["ids_slice"].tolist()):
        assert 0 <= start <= int(data["spectrogram_mask"][row].sum()) - 20
        expected = full[row, 0, start * hop + margin : (start + 20) * hop - margin]
        torch.testing.assert_close(out["waveform"][row, 0, margin:-margin], expected, rtol=1e-5, atol=1e-6)


def test_segments_of_short_utterances_start_at_zero_and_are_zero_padded():
    lengths = torch.tensor([3, 50])
    starts = random_segment_starts(lengths, segment_size=8)
    assert starts[0] == 0 and 0 <= starts[1] <= 42
    x = torch.arange(2 * 5, dtype=torch.float).view(2, 1, 5)
    sliced = slice_segments(x, torch.tensor([0, 2]), 4)
    assert torch.equal(sliced, torch.tensor([[[0.0, 1, 2, 3]], [[7.0, 8, 9, 0]]]))


def test_forward_train_rejects_bad_inputs():
    vits = model(num_speakers=3, speaker_embedding_size=8)
    data = batch(speakers=True)
    with pytest.raises(ValueError, match="spectrogram_bins=9"):
        vits.forward_train(**{**data, "spectrogram": data["spectrogram"][:, :5]})
    with pytest.raises(ValueError, match="spectrogram_mask"):
        vits.forward_train(**{**data, "spectrogram_mask": data["spectrogram_mask"][:, :10]})
    with pytest.raises(ValueError, match="speaker_id"):
        vits.forward_train(**{**data, "speaker_id": None})
    with pytest.raises(ValueError, match="segment_size"):
        vits.forward_train(**data, segment_size=0)


def test_blank_token_embedding_starts_random_and_trains():
    """The interspersed blank (id 0, the config's pad_token_id, about half of all input ids) is a symbol the
    original trains (`nn.Embedding` without padding_idx, normal init over every row), not padding."""
    vits = model().train()
    data = batch()
    data["input_ids"][:, ::2] = 0  # blanks between the symbols, as the tokenizer intersperses them
    embedding = vits.text_encoder.embed_tokens.weight
    out = vits.forward_train(**data, segment_size=8)
    (kl_loss(out) + out["duration_loss"]).backward()
    assert embedding.grad[0].abs().sum() > 0, "no gradient reaches the blank's embedding"
    assert embedding[0].abs().sum() > 0, "the blank's row starts at zero"


def test_alignment_scores_ignore_bf16_autocast_when_neighbouring_priors_are_close():
    """The hard case for the alignment search: 60 tokens whose priors differ by a few hundredths (192 channels, as
    the original), a latent that walks through them. bf16 matmuls round those differences away."""
    generator = torch.Generator().manual_seed(0)
    batch_size, channels, tokens, frames = 2, 192, 60, 300
    means = torch.randn(batch_size, channels, 1, generator=generator) + 0.05 * torch.randn(
        batch_size, channels, tokens, generator=generator)  # [B, C, text]
    log_stddevs = -1.0 + 0.05 * torch.randn(batch_size, channels, tokens, generator=generator)
    path = torch.arange(tokens).repeat_interleave(frames // tokens)  # [frames]: the token behind each frame
    z_p = means[:, :, path] + log_stddevs[:, :, path].exp() * torch.randn(batch_size, channels, frames,
                                                                         generator=generator)  # [B, C, frames]
    mask = torch.ones(batch_size, tokens, frames)

    def alignment(dtype, autocast=False):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            scores = prior_log_likelihood(z_p.to(dtype), means.to(dtype), log_stddevs.to(dtype))
        return monotonic_alignment_search(scores, mask)

    float32, under_bf16 = alignment(torch.float32), alignment(torch.float32, autocast=True)
    agreement = (under_bf16.argmax(1) == float32.argmax(1)).float().mean().item()  # frames on the same token
    print(f"frames aligned as in float32: {agreement:.3f} under bf16 autocast")
    assert torch.equal(under_bf16, float32)
    assert torch.equal(float32, alignment(torch.float64))  # and float32 is as good as exact here


def test_prior_log_likelihood_is_the_originals_neg_cent():
    """jaywalnut310/vits models.py SynthesizerTrn.forward: neg_cent1..4, frames first; ours is text first."""
    generator = torch.Generator().manual_seed(2)
    z_p = torch.randn(2, 6, 11, generator=generator, dtype=torch.float64)  # [B, C, frames]
    m_p = torch.randn(2, 6, 5, generator=generator, dtype=torch.float64)  # [B, C, text]
    logs_p = 0.3 * torch.randn(2, 6, 5, generator=generator, dtype=torch.float64)
    s_p_sq_r = torch.exp(-2 * logs_p)
    neg_cent1 = torch.sum(-0.5 * math.log(2 * math.pi) - logs_p, [1], keepdim=True)
    neg_cent2 = torch.matmul(-0.5 * (z_p**2).transpose(1, 2), s_p_sq_r)
    neg_cent3 = torch.matmul(z_p.transpose(1, 2), (m_p * s_p_sq_r))
    neg_cent4 = torch.sum(-0.5 * (m_p**2) * s_p_sq_r, [1], keepdim=True)
    neg_cent = neg_cent1 + neg_cent2 + neg_cent3 + neg_cent4  # [B, frames, text]
    torch.testing.assert_close(prior_log_likelihood(z_p, m_p, logs_p), neg_cent.transpose(1, 2))
