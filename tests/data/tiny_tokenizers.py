"""Narrow random EnCodec and HuBERT models with the real architectures' strides (320 samples per frame),
so tokenization tests run in seconds. Seeded: every call builds the same weights."""

import warnings

import pytest
import torch
import torchaudio
from encodec import EncodecModel
from encodec.modules import SEANetDecoder, SEANetEncoder
from encodec.quantization import ResidualVectorQuantizer

from speechtrain.data.codecs import EncodecCodec
from speechtrain.data.semantic import HubertSemanticTokenizer

HUBERT_CONVS = [(32, 10, 5), (32, 3, 2), (32, 3, 2), (32, 3, 2), (32, 3, 2), (32, 2, 2), (32, 2, 2)]  # HuBERT's strides


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Import into a test module to run it on one torch thread: tiny convolutions gain nothing from more, and on
    a shared machine the extra threads spin (measured: 4 s instead of 100 s for these tests under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_codec() -> EncodecCodec:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seanet = dict(channels=1, dimension=16, n_filters=2, lstm=1, causal=True, norm="weight_norm")
        model = EncodecModel(SEANetEncoder(**seanet), SEANetDecoder(**seanet),
                             ResidualVectorQuantizer(dimension=16, n_q=32, bins=1024),
                             [1.5, 3.0, 6.0, 12.0, 24.0], 24000, 1, name="tiny")
    return EncodecCodec(bandwidth=6.0, model=model)


def tiny_hubert(layer: int = 2, extractor_mode: str = "group_norm") -> HubertSemanticTokenizer:
    """hubert_base's feature extractor normalisation by default; "layer_norm" is large's and xlarge's."""
    torch.manual_seed(0)
    model = torchaudio.models.wav2vec2_model(
        extractor_mode=extractor_mode, extractor_conv_layer_config=HUBERT_CONVS, extractor_conv_bias=False,
        encoder_embed_dim=32, encoder_projection_dropout=0.0, encoder_pos_conv_kernel=16, encoder_pos_conv_groups=4,
        encoder_num_layers=2, encoder_num_heads=2, encoder_attention_dropout=0.0, encoder_ff_interm_features=64,
        encoder_ff_interm_dropout=0.0, encoder_dropout=0.0, encoder_layer_norm_first=False, encoder_layer_drop=0.0,
        aux_num_out=None,
    )
    return HubertSemanticTokenizer(layer=layer, model=model)
