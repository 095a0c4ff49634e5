"""The Bark-compatible semantic quantizer against the community implementation's published architecture, its
checkpoint format, and the token folders it makes."""

import hashlib
import json
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from tiny_tokenizers import one_torch_thread, tiny_codec, tiny_hubert  # noqa: E402, F401 (an autouse fixture)

from speechtrain.data.audio import load_audio  # noqa: E402
from speechtrain.data.bark_data import check_semantic_ids_for_pretrained, check_token_info  # noqa: E402
from speechtrain.data.token_shards import KMEANS_FILE, read_token_info, read_token_shards, tokenize_corpus  # noqa: E402
from speechtrain.errors import CheckpointError, ConfigError  # noqa: E402
from speechtrain.models.bark.quantizer import BarkSemanticQuantizer, QuantizerShape, load_quantizer  # noqa: E402
from speechtrain.train import BUNDLED_DATA_DIR  # noqa: E402

MINI = BUNDLED_DATA_DIR / "mini"


class CommunityQuantizer(nn.Module):
    """gitmylo/bark-voice-cloning-HuBERT-quantizer's tokenizer as its code publishes it: a two-layer batch-first
    LSTM, in version 1 a 4096-wide linear layer, a linear head and a log-softmax over dim 1; `get_token` is the
    argmax over dim 1 of features [N, input_size]. `save` is its format: torch.save of the state dict, then a
    `<file stem>/.info` JSON entry appended to the zip."""

    def __init__(self, hidden_size=1024, input_size=768, output_size=10000, version=0):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, 2, batch_first=True)
        if version == 1:
            self.intermediate = nn.Linear(hidden_size, 4096)
        self.fc = nn.Linear(4096 if version == 1 else hidden_size, output_size)
        self.softmax = nn.LogSoftmax(dim=1)
        self.sizes = {"input_size": input_size, "hidden_size": hidden_size, "output_size": output_size,
                      "version": version}

    def forward(self, x):
        x, _ = self.lstm(x)
        if self.sizes["version"] == 1:
            x = self.intermediate(x)
        return self.softmax(self.fc(x))

    @torch.no_grad()
    def get_token(self, x):
        return torch.argmax(self(x), dim=1)

    def save(self, path, with_info=True):
        torch.save(self.state_dict(), path)
        if with_info:
            with zipfile.ZipFile(path, "a") as archive:
                archive.writestr(".".join(Path(path).name.split(".")[:-1]) + "/.info", json.dumps(self.sizes))


def community(seed=0, **sizes) -> CommunityQuantizer:
    """Random weights scaled up (biases left), so the ids vary from frame to frame (an id per frame is checked)."""
    torch.manual_seed(seed)
    model = CommunityQuantizer(**sizes).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "weight" in name:
                parameter.mul_(10)
    return model


@pytest.mark.parametrize("version", [0, 1])
def test_a_community_checkpoint_with_info_gives_its_ids(tmp_path, version):
    reference = community(hidden_size=24, input_size=32, output_size=50, version=version)
    path = tmp_path / f"quantifier_v{version}.pth"
    reference.save(path)
    quantizer = load_quantizer(path)
    assert quantizer.shape == QuantizerShape(32, 24, 50, version) and quantizer.num_clusters == 50
    features = torch.randn(120, 32)
    expected = reference.get_token(features)
    assert len(set(expected.tolist())) > 5  # random weights still spread over many ids
    assert torch.equal(quantizer.predict(features), expected)
    assert quantizer.settings()["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_first_checkpoints_without_info_are_hubert_base_sized(tmp_path):
    """quantifier_hubert_base_ls960_14.pth has no .info entry: 768 -> LSTM 1024 -> 10,000 ids, version 0."""
    reference = community()
    path = tmp_path / "quantifier_hubert_base_ls960_14.pth"
    reference.save(path, with_info=False)
    quantizer = load_quantizer(path)
    assert quantizer.shape == QuantizerShape() and quantizer.hubert_layer == 9 and quantizer.bark_compatible
    features = torch.randn(40, 768)
    assert torch.equal(quantizer.predict(features), reference.get_token(features))


def test_our_save_is_the_community_format(tmp_path):
    torch.manual_seed(1)
    ours = BarkSemanticQuantizer(QuantizerShape(32, 16, 40, 1))
    ours.save(tmp_path / "ours.pth")
    reference = CommunityQuantizer(16, 32, 40, 1)
    reference.load_state_dict(torch.load(tmp_path / "ours.pth", weights_only=True))
    with zipfile.ZipFile(tmp_path / "ours.pth") as archive:
        assert json.loads(archive.read("ours/.info")) == reference.sizes
    features = torch.randn(30, 32)
    assert torch.equal(ours.eval().predict(features), reference.eval().get_token(features))


def test_bad_checkpoints_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth not found"):
        load_quantizer(tmp_path / "nowhere.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="text.pth: not a Bark quantizer checkpoint"):
        load_quantizer(tmp_path / "text.pth")
    wrong = tmp_path / "wrong.pth"
    state = community(hidden_size=24, input_size=32, output_size=50).state_dict()
    torch.save({**state, "fc.weight": torch.zeros(7, 24)}, wrong)  # a head that is not 50 x 24
    with zipfile.ZipFile(wrong, "a") as archive:
        archive.writestr("wrong/.info", json.dumps({"input_size": 32, "hidden_size": 24, "output_size": 50,
                                                    "version": 0}))
    with pytest.raises(CheckpointError, match="wrong.pth: does not match a version-0 Bark quantizer"):
        load_quantizer(wrong)


def tiny_quantizer(tmp_path: Path, width: int = 32) -> tuple[CommunityQuantizer, Path]:
    reference = community(hidden_size=16, input_size=width, output_size=64)
    path = tmp_path / "quantizer.pth"
    reference.save(path)
    return reference, path


def test_the_semantic_tokenizer_gives_the_quantizers_ids_of_hubert_features(tmp_path):
    reference, path = tiny_quantizer(tmp_path)
    semantic = tiny_hubert(layer=2)
    semantic.quantizer = load_quantizer(path)
    waveform = torch.randn(16000)
    assert torch.equal(semantic.encode(waveform, 16000), reference.get_token(semantic.features(waveform, 16000)))
    with pytest.raises(ConfigError, match="reads 48-wide features, this HuBERT .* gives 32"):
        type(semantic)(layer=2, model=semantic.model, quantizer=load_quantizer(tiny_quantizer(tmp_path, 48)[1]))


def test_a_quantized_tokens_folder_is_bark_compatible_and_passes_the_guard(tmp_path):
    reference, path = tiny_quantizer(tmp_path)
    semantic = tiny_hubert(layer=2)
    semantic.quantizer = load_quantizer(path)
    out = tokenize_corpus({"format": "ljspeech", "path": str(MINI), "limit": 3}, tmp_path / "tokens", tiny_codec(),
                          semantic, shard_size=2)
    info = read_token_info(out)
    assert info["semantic"]["bark_compatible"] is True and info["semantic"]["kmeans"] is None
    assert info["semantic"]["quantizer"]["name"] == "bark-quantizer" and info["semantic"]["num_clusters"] == 64
    assert not (out / KMEANS_FILE).exists()
    first = read_token_shards(out)[0]
    waveform, rate = load_audio(MINI / "wavs" / f"{first.id}.wav", 16000), 16000
    assert torch.equal(first.semantic, reference.get_token(semantic.features(waveform, rate)))
    check_token_info(info, "coarse_acoustics", out / "tokens.json")
    check_semantic_ids_for_pretrained(info, "coarse_acoustics", out / "tokens.json")  # no refusal


def test_cli_tokenizes_with_the_bark_quantizer_at_its_layer(tmp_path, monkeypatch, capsys):
    from speechtrain.cli import tokenize as cli

    _, path = tiny_quantizer(tmp_path)
    monkeypatch.setattr(cli, "EncodecCodec", lambda bandwidth, checkpoint: tiny_codec())
    layers = []

    def hubert(checkpoint, layer, kmeans, quantizer=None):
        layers.append(layer)
        built = tiny_hubert(min(layer, 2))
        built.quantizer = quantizer
        return built

    monkeypatch.setattr(cli, "HubertSemanticTokenizer", hubert)
    common = ["--corpus-format", "ljspeech", "--corpus-path", str(MINI), "--limit", "2", "--device", "cpu"]
    cli.main([*common, "--out", str(tmp_path / "cli"), "--semantic", "bark-quantizer", "--quantizer-checkpoint",
              str(path)])
    assert layers == [9]  # the quantizer's layer, not the k-means default
    info = read_token_info(tmp_path / "cli")
    assert info["semantic"]["bark_compatible"] is True and info["semantic"]["quantizer"]["checkpoint"] == path.name
    with pytest.raises(SystemExit, match="--semantic bark-quantizer needs its weights: --quantizer-checkpoint"):
        cli.main([*common, "--out", str(tmp_path / "x"), "--semantic", "bark-quantizer"])
    with pytest.raises(SystemExit, match="--quantizer-checkpoint is for a trained quantizer: add --semantic"):
        cli.main([*common, "--out", str(tmp_path / "x"), "--quantizer-checkpoint", str(path)])
