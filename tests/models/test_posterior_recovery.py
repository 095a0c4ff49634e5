"""Posterior-encoder recovery by self-distillation: only the posterior learns, and it learns the latents."""

from __future__ import annotations

import pytest
import torch

from speechtrain.errors import DataError
from speechtrain.hub import load_bundle, save_bundle
from speechtrain.models.vits import VitsConfig, VitsModel
from speechtrain.models.vits.hub import state_dict_to_hf
from speechtrain.models.vits.posterior_recovery import (
    latent_nll,
    recover_folder,
    recover_posterior,
    synthesise_pairs,
)
from speechtrain.models.vits.tokenizer import VitsTextTokenizer

TINY = dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, flow_size=16, spectrogram_bins=65,
            upsample_rates=[4, 4], upsample_kernel_sizes=[8, 8], upsample_initial_channel=32,
            resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 2]], resblock_type=2,
            posterior_encoder_num_wavenet_layers=2, prior_encoder_num_wavenet_layers=2, layerdrop=0.0)


def tiny_voice() -> VitsModel:
    torch.manual_seed(0)
    return VitsModel(VitsConfig(**TINY, vocab_size=40, speaking_rate=0.5)).eval()


def test_recovery_trains_the_posterior_alone_and_lowers_its_latent_nll():
    model = tiny_voice()
    pairs = synthesise_pairs(model, [list(range(1, 12)), list(range(5, 20)), [3, 4, 5, 6, 7, 8]],
                             samples_per_sentence=2, progress=False)
    assert all(pair.latent.shape[-1] == pair.spectrogram.shape[-1] for pair in pairs)  # frame for frame
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with torch.no_grad():
        start = float(latent_nll(model, pairs))
    losses = recover_posterior(model, pairs, steps=80, batch_size=4, learning_rate=3e-3, progress=False)
    with torch.no_grad():
        end = float(latent_nll(model, pairs))
    assert len(losses) == 80 and end < 0.7 * start, (start, end)
    changed = {name for name, value in model.state_dict().items() if not torch.equal(value, before[name])}
    assert changed and all(name.startswith("posterior_encoder.") for name in changed), sorted(changed)[:5]
    assert all(parameter.requires_grad for parameter in model.parameters())


def test_the_command_writes_a_folder_with_the_recovered_posterior(tmp_path):
    tokenizer = VitsTextTokenizer()
    model = VitsModel(VitsConfig(**TINY, vocab_size=len(tokenizer), speaking_rate=0.5))
    save_bundle(tmp_path / "voice", model, tokenizer)
    losses = recover_folder(tmp_path / "voice", tmp_path / "recovered", ["hello there", "a second sentence"],
                            steps=5, samples_per_sentence=1, batch_size=2)
    assert len(losses) == 5
    recovered, _, _ = load_bundle(tmp_path / "recovered")
    before, after = state_dict_to_hf(model), state_dict_to_hf(recovered)  # weight norm folded, as saved
    changed = {name for name in after if not torch.equal(after[name], before[name])}
    assert changed and all(name.startswith("posterior_encoder.") for name in changed), sorted(changed)[:5]


def test_recovery_without_sentences_is_refused():
    with pytest.raises(DataError, match="at least one"):
        recover_posterior(tiny_voice(), [], steps=1)
