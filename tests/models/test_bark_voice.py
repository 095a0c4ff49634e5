"""Voice presets: made by speechtrain-bark-voice, read by transformers' BarkProcessor, and generation and training
with them against transformers' `generate` with the same `history_prompt` (tiny random models)."""

import numpy as np
import pytest
import torch
from test_bark import hf_model, ours_from
from test_bark_generation import TEXTS, hf_semantic_generate, record_calls

from speechtrain.data.bark_data import BarkCoarseCollator, BarkFineCollator, BarkSemanticCollator
from speechtrain.data.token_shards import read_token_shards
from speechtrain.errors import DataError
from speechtrain.models.bark import (
    BarkGenerationConfig,
    CoarseGenerationConfig,
    generate_coarse,
    generate_fine,
    generate_semantic,
    layouts,
)
from speechtrain.models.bark.cli import voice_main
from speechtrain.models.bark.voice import VoicePreset, load_voice, save_voice
from speechtrain.train import BUNDLED_DATA_DIR

transformers = pytest.importorskip("transformers")
from transformers.models.bark.generation_configuration_bark import (  # noqa: E402
    BarkCoarseGenerationConfig,
    BarkFineGenerationConfig,
    BarkSemanticGenerationConfig,
)

TOKENS = BUNDLED_DATA_DIR / "mini_tokens"
UTTERANCE = "mini_0001"  # 104 semantic ids, 157 codec frames


@pytest.fixture(scope="module")
def preset_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("voice") / "mini_0001.npz"
    voice_main(["--tokens", str(TOKENS), "--utterance", UTTERANCE, "--out", str(path)])
    return path


@pytest.fixture(scope="module")
def hf_history(preset_path):
    """The preset as transformers' processor hands it to generate."""
    tokenizer = transformers.BertTokenizer(str(BUNDLED_DATA_DIR / "bark_text_mini" / "vocab.txt"))
    inputs = transformers.BarkProcessor(tokenizer)("hello", voice_preset=str(preset_path))
    return inputs["history_prompt"]


def test_the_preset_holds_the_utterances_tokens_and_loads_in_transformers(preset_path, hf_history):
    utterance = next(u for u in read_token_shards(TOKENS) if u.id == UTTERANCE)
    with np.load(preset_path) as arrays:
        assert sorted(arrays.files) == ["coarse_prompt", "fine_prompt", "semantic_prompt"]
        assert all(arrays[key].dtype == np.int64 for key in arrays.files)
    assert torch.equal(hf_history["semantic_prompt"], utterance.semantic)
    assert torch.equal(hf_history["fine_prompt"], utterance.acoustic.T)
    assert torch.equal(hf_history["coarse_prompt"], utterance.acoustic[:, :2].T)
    preset = load_voice(preset_path)
    assert torch.equal(preset.fine_prompt, hf_history["fine_prompt"])


def test_bad_presets_and_utterances_are_named(tmp_path, preset_path, capsys):
    np.savez(tmp_path / "partial.npz", semantic_prompt=np.arange(5))
    with pytest.raises(DataError, match=r"partial.npz: a Bark voice preset holds .*missing \['coarse_prompt'"):
        load_voice(tmp_path / "partial.npz")
    preset = load_voice(preset_path)
    bad = VoicePreset(preset.semantic_prompt, preset.fine_prompt, preset.fine_prompt)
    with pytest.raises(DataError, match=r"coarse_prompt must be a non-empty \[2, frames\] array, got shape \(8, 157\)"):
        save_voice(bad.check(), tmp_path / "bad.npz")
    with pytest.raises(DataError, match=r"semantic_prompt must hold integer ids in \[0, 10000\)"):
        VoicePreset(preset.semantic_prompt + 10_000, preset.coarse_prompt, preset.fine_prompt).check()
    with pytest.raises(SystemExit):
        voice_main(["--tokens", str(TOKENS), "--utterance", "nobody", "--out", str(tmp_path / "x.npz")])
    assert "no utterance 'nobody' (it holds 40, e.g. mini_0001" in capsys.readouterr().err


def test_greedy_semantic_with_the_preset_equals_transformers(preset_path, hf_history):
    hf = hf_model("semantic")
    ours = ours_from(hf)
    with torch.no_grad():
        expected = hf_semantic_generate(hf, TEXTS, 16, history_prompt=hf_history)
    generated = generate_semantic(ours, TEXTS, history=load_voice(preset_path).semantic_prompt.tolist(),
                                  max_new_tokens=16)
    assert torch.equal(generated, expected)
    without = generate_semantic(ours, TEXTS, max_new_tokens=16)
    assert not torch.equal(generated, without)  # the preset changes what is generated

    collator = BarkSemanticCollator(_CharTokenizer(), voice=load_voice(preset_path))
    collated = collator([_Utterance(torch.arange(20), None)])
    merged_history = collated["input_ids"][0, 256:512]  # the history half of the merged context
    assert merged_history[:104].tolist() == hf_history["semantic_prompt"].tolist()


class _CharTokenizer:
    def encode(self, text):
        return [ord(char) for char in text]

    def __len__(self):
        return 256


# Bark's own coarse windows (60 new tokens, 630 of history: the whole 311-token preset history fits) and scaled-down
# ones (30 and 90: the preset's history is cut to 29 semantic ids and 85 coarse tokens).
COARSE_WINDOWS = [dict(), dict(sliding_window_len=30, max_coarse_history=90)]


@pytest.mark.parametrize("window", COARSE_WINDOWS, ids=["bark", "scaled"])
def test_greedy_coarse_with_the_preset_equals_transformers_and_windows_score_only_new_tokens(preset_path,
                                                                                          hf_history, window):
    config = BarkGenerationConfig(coarse=CoarseGenerationConfig(**window))
    voice = load_voice(preset_path)
    hf = hf_model("coarse_acoustics")
    ours = ours_from(hf)
    semantic = torch.randint(0, 10_000, (2, 40), generator=torch.Generator().manual_seed(5))
    semantic[1, 30:] = 10_000
    calls = record_calls(hf)
    with torch.no_grad():
        expected, expected_lengths = hf.generate(
            semantic.clone(), semantic_generation_config=BarkSemanticGenerationConfig(),
            coarse_generation_config=BarkCoarseGenerationConfig(**window), history_prompt=hf_history,
            return_output_lengths=True)
    generated, lengths = generate_coarse(ours, semantic, config, voice=voice)
    assert torch.equal(generated, expected) and torch.equal(lengths, expected_lengths.long())
    assert not torch.equal(generated, generate_coarse(ours, semantic, config)[0])

    semantic_history, token_history = layouts.coarse_history(voice, config)
    assert (len(semantic_history), len(token_history)) == ((104, 311) if not window else (29, 85))
    codes = (generated[0].view(-1, 2) - torch.tensor([10_000, 11_024])).T  # [2, frames]
    windows = layouts.coarse_windows(semantic[0].tolist(), codes, config, voice)
    utterance = _Utterance(semantic[0], torch.cat([codes.T, torch.zeros(codes.shape[1], 6, dtype=torch.long)], 1))
    collated = BarkCoarseCollator(config=config, voice=voice)([utterance])  # what training feeds: these windows
    assert torch.equal(collated["input_ids"], layouts.coarse_batch(windows, config)["input_ids"])
    prompts = [kwargs["input_ids"][0] for _, kwargs, _ in calls if kwargs["input_ids"].shape[1] > 1]
    assert len(windows) == len(prompts) == -(-120 // config.coarse.sliding_window_len)
    for (input_ids, _), prompt in zip(windows, prompts):
        assert input_ids[: len(prompt)] == prompt.tolist()  # the preset's history placed as generation places it
    batch = layouts.coarse_batch(windows, config)
    with torch.no_grad():
        logits, _ = ours(batch["input_ids"])
    step_logits = torch.stack([logits[0, -1] for _, _, logits in calls])  # [steps, V]
    scored = batch["labels"] != layouts.IGNORE_INDEX
    assert torch.equal(batch["labels"][scored], generated[0])  # the utterance's tokens only, never the history
    assert (logits[scored] - step_logits).abs().max() < 1e-4


class _Utterance:
    def __init__(self, semantic, acoustic):
        self.id, self.text, self.semantic, self.acoustic = "u", "", semantic, acoustic


def test_greedy_fine_with_the_preset_equals_transformers_and_windows_score_only_new_frames(preset_path, hf_history):
    voice = load_voice(preset_path)
    hf = hf_model("fine_acoustics")
    ours = ours_from(hf)
    frames = 300  # after the preset's 157 frames: one window
    codes = torch.randint(0, 1024, (1, frames, 2), generator=torch.Generator().manual_seed(3))
    coarse_ids = (codes + torch.tensor([10_000, 11_024])).flatten(1)
    calls = record_calls(hf)
    with torch.no_grad():
        expected = hf.generate(coarse_ids, semantic_generation_config=BarkSemanticGenerationConfig(),
                               coarse_generation_config=BarkCoarseGenerationConfig(),
                               fine_generation_config=BarkFineGenerationConfig(), history_prompt=hf_history)
    generated = generate_fine(ours, coarse_ids, voice=voice)
    assert generated.shape == (1, 8, frames) and torch.equal(generated, expected)
    assert not torch.equal(generated, generate_fine(ours, coarse_ids))

    (window,) = layouts.fine_windows_after(generated[0].T, voice)
    collated = BarkFineCollator(seed=0, voice=voice)([_Utterance(None, generated[0].T)])
    assert torch.equal(collated["labels"], layouts.fine_batch([window], collated["codebook_idx"].tolist())["labels"])
    assert (window.start, window.new_from, window.new_to) == (0, 157, 157 + frames)
    batch = layouts.fine_batch([window] * 6, list(range(2, 8)))
    with torch.no_grad():
        logits = ours(batch["codebook_idx"], batch["input_ids"])
    real = 157 + frames
    for row, (args, _, expected_logits) in enumerate(calls):
        codebook, fed = args
        scored = batch["labels"][row] != layouts.IGNORE_INDEX
        assert scored.sum() == frames and not scored[:157].any()  # the preset's frames are never scored
        assert torch.equal(batch["input_ids"][row, :real], fed[0, :real].long())
        if codebook == 2:  # no prediction written into the padding yet: the whole input and its logits agree
            assert torch.equal(batch["input_ids"][row], fed[0].long())
            assert (logits[row, scored] - expected_logits[0, scored]).abs().max() < 1e-4
