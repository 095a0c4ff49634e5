"""The VITS discriminator against the original's layout, with old-style weight/spectral norm as its checkpoints have."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from speechtrain.models.vits.discriminator import MultiPeriodDiscriminator


class OriginalDiscriminator(nn.Module):
    """jaywalnut310/vits MultiPeriodDiscriminator's modules, built with torch.nn.utils.weight_norm/spectral_norm
    (state dict keys `weight_g`/`weight_v`, or `weight_orig`/`weight_u`/`weight_v`), forward written out here."""

    def __init__(self, use_spectral_norm: bool):
        super().__init__()
        norm = nn.utils.spectral_norm if use_spectral_norm else nn.utils.weight_norm
        scale = nn.Module()
        scale.convs = nn.ModuleList([
            norm(nn.Conv1d(1, 16, 15, 1, padding=7)), norm(nn.Conv1d(16, 64, 41, 4, groups=4, padding=20)),
            norm(nn.Conv1d(64, 256, 41, 4, groups=16, padding=20)),
            norm(nn.Conv1d(256, 1024, 41, 4, groups=64, padding=20)),
            norm(nn.Conv1d(1024, 1024, 41, 4, groups=256, padding=20)), norm(nn.Conv1d(1024, 1024, 5, 1, padding=2)),
        ])
        scale.conv_post = norm(nn.Conv1d(1024, 1, 3, 1, padding=1))
        self.discriminators = nn.ModuleList([scale])
        for period in (2, 3, 5, 7, 11):
            discriminator = nn.Module()
            discriminator.period = period
            discriminator.convs = nn.ModuleList([
                norm(nn.Conv2d(1, 32, (5, 1), (3, 1), padding=(2, 0))),
                norm(nn.Conv2d(32, 128, (5, 1), (3, 1), padding=(2, 0))),
                norm(nn.Conv2d(128, 512, (5, 1), (3, 1), padding=(2, 0))),
                norm(nn.Conv2d(512, 1024, (5, 1), (3, 1), padding=(2, 0))),
                norm(nn.Conv2d(1024, 1024, (5, 1), 1, padding=(2, 0))),
            ])
            discriminator.conv_post = norm(nn.Conv2d(1024, 1, (3, 1), 1, padding=(1, 0)))
            self.discriminators.append(discriminator)

    @staticmethod
    def run(discriminator, x):
        if hasattr(discriminator, "period"):
            b, c, t = x.shape
            if t % discriminator.period != 0:
                n_pad = discriminator.period - (t % discriminator.period)
                x = F.pad(x, (0, n_pad), "reflect")
                t = t + n_pad
            x = x.view(b, c, t // discriminator.period, discriminator.period)
        fmap = []
        for layer in discriminator.convs:
            x = F.leaky_relu(layer(x), 0.1)
            fmap.append(x)
        x = discriminator.conv_post(x)
        fmap.append(x)
        return torch.flatten(x, 1, -1), fmap

    def forward(self, y, y_hat):
        outputs = [(self.run(d, y), self.run(d, y_hat)) for d in self.discriminators]
        return ([r[0] for r, _ in outputs], [g[0] for _, g in outputs], [r[1] for r, _ in outputs],
                [g[1] for _, g in outputs])


def original(use_spectral_norm: bool) -> OriginalDiscriminator:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated
        torch.manual_seed(1)
        return OriginalDiscriminator(use_spectral_norm)


@pytest.fixture(scope="module")
def waveforms():
    generator = torch.Generator().manual_seed(0)
    return 0.5 * torch.randn(2, 1, 1000, generator=generator), 0.5 * torch.randn(2, 1, 1000, generator=generator)


def assert_same_outputs(ours, reference):
    for ours_list, reference_list in zip(ours[:2], reference[:2]):
        assert len(ours_list) == len(reference_list) == 6
        for a, b in zip(ours_list, reference_list):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    for ours_maps, reference_maps in zip(ours[2] + ours[3], reference[2] + reference[3]):
        assert len(ours_maps) == len(reference_maps)
        for a, b in zip(ours_maps, reference_maps):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


@pytest.mark.parametrize("use_spectral_norm", [False, True], ids=["weight_norm", "spectral_norm"])
def test_original_checkpoints_load_and_give_the_same_outputs(waveforms, use_spectral_norm):
    reference = original(use_spectral_norm).eval()
    state = reference.state_dict()
    if use_spectral_norm:
        assert {"discriminators.0.convs.0.weight_orig", "discriminators.0.convs.0.weight_u"} <= state.keys()
    else:
        assert {"discriminators.0.convs.0.weight_g", "discriminators.5.conv_post.weight_v"} <= state.keys()
    ours = MultiPeriodDiscriminator(use_spectral_norm=use_spectral_norm).eval()
    ours.load_original_state_dict({"model": state, "iteration": 10})  # a D_*.pth checkpoint
    with torch.no_grad():
        ours_out, reference_out = ours(*waveforms), reference(*waveforms)
    assert_same_outputs(ours_out, reference_out)
    largest = max((a - b).abs().max().item() for a, b in zip(ours_out[0], reference_out[0]))
    print(f"{'spectral' if use_spectral_norm else 'weight'} norm: largest logit difference {largest:.1e}")


def test_outputs_feature_maps_and_gradients(waveforms):
    torch.manual_seed(0)
    discriminator = MultiPeriodDiscriminator(periods=[11])  # the scale discriminator and one period keep it quick
    real, fake = waveforms
    fake = fake.clone().requires_grad_()
    real_logits, fake_logits, real_maps, fake_maps = discriminator(real, fake)
    assert [len(maps) for maps in real_maps] == [7, 6] == [len(maps) for maps in fake_maps]
    assert real_maps[0][0].shape == (2, 16, 1000) and real_logits[0].shape == (2, 4)  # 1000 / 4^4, rounded up
    assert real_maps[1][0].shape == (2, 32, 31, 11)  # 1000 reflect-padded to 1001 = 91 x 11, stride 3
    assert real_logits[1].shape == (2, 2 * 11) and fake_logits[1].shape == (2, 22)
    sum(logits.sum() for logits in fake_logits).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is not None for p in discriminator.parameters())
    names = {name for name, _ in discriminator.named_parameters()}
    assert "discriminators.1.convs.0.parametrizations.weight.original0" in names


def test_bad_inputs_are_explained():
    discriminator = MultiPeriodDiscriminator(periods=[2])
    with pytest.raises(ValueError, match=r"\[batch, 1, samples\]"):
        discriminator(torch.zeros(2, 100), torch.zeros(2, 100))
    with pytest.raises(RuntimeError, match="Missing key"):
        discriminator.load_original_state_dict({"discriminators.0.conv_post.weight_g": torch.zeros(1, 1, 1)})
    with pytest.raises(ValueError, match="periods"):
        MultiPeriodDiscriminator(periods=[])
