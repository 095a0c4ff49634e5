"""Whisper's previous-text prompts (`prompt` / `prev_text` in a manifest, `--prompt` to transcribe) and per-utterance
languages (`lang`), against transformers' WhisperTokenizer and generate(prompt_ids=...) with the real tiny.en."""

import json

import pytest
import torch

from speechtrain.cli.transcribe import Transcriber
from speechtrain.data.audio import load_audio
from speechtrain.data.collate import AsrCollator
from speechtrain.data.corpora import read_manifest
from speechtrain.data.datasets import SpeechDataset
from speechtrain.hub import load_bundle
from speechtrain.layers.labels import IGNORE_INDEX
from speechtrain.models.whisper.tokenizer import train_whisper_tokenizer
from speechtrain.train import BUNDLED_DATA_DIR

transformers = pytest.importorskip("transformers")
WAVS = BUNDLED_DATA_DIR / "mini" / "wavs"
PROMPT = "Mister Quilter's dog, Bernard."


def _manifest(folder, rows: list[dict]) -> list:
    path = folder / "manifest.jsonl"
    path.write_text("".join(json.dumps({"audio_filepath": str(WAVS / f"mini_{i:04d}.wav"), **row}) + "\n"
                            for i, row in enumerate(rows, 1)))
    return read_manifest(path)


def _dataset(utterances, tokenizer) -> SpeechDataset:
    return SpeechDataset(utterances, 16000, tokenizer, max_duration=30.0, max_label_tokens=448)


def test_a_prompted_utterance_trains_on_transformers_sequence_with_the_prompt_masked(tiny_en, tmp_path):
    model, tokenizer, features = load_bundle(tiny_en[1])
    utterances = _manifest(tmp_path, [{"text": "The cat sleeps by the warm window.", "prev_text": PROMPT},
                                      {"text": "Please open the door for the dog."}])
    assert utterances[0].prompt == PROMPT and utterances[1].prompt is None
    batch = AsrCollator(features, tokenizer)([_dataset(utterances, tokenizer)[i] for i in range(2)])

    hf_tokenizer = transformers.WhisperTokenizerFast.from_pretrained(tiny_en[1])
    prompt_ids = hf_tokenizer.get_prompt_ids(PROMPT).tolist()
    expected = prompt_ids + hf_tokenizer(utterances[0].text).input_ids  # [<|startofprev|>, prompt, P, T, eos]
    row = batch["decoder_input_ids"][0, : len(expected) - 1].tolist()
    assert row == expected[:-1] and batch["decoder_attention_mask"][0].sum() == len(expected) - 1
    labels = batch["labels"][0]
    assert labels[: len(prompt_ids)].eq(IGNORE_INDEX).all()  # the prompt is context, never a target
    assert labels[len(prompt_ids) : len(expected) - 1].tolist() == expected[len(prompt_ids) + 1 :]
    unprompted = hf_tokenizer(utterances[1].text).input_ids
    assert batch["decoder_input_ids"][1, : len(unprompted) - 1].tolist() == unprompted[:-1]

    hf_model = transformers.WhisperForConditionalGeneration.from_pretrained(tiny_en[1]).eval()
    with torch.no_grad():
        ours = model.eval()(batch["input_features"], batch["attention_mask"], batch["decoder_input_ids"],
                            batch["decoder_attention_mask"])[0, : len(expected) - 1]
        theirs = hf_model(input_features=batch["input_features"][:1],
                          decoder_input_ids=torch.tensor([expected[:-1]])).logits[0]
    assert (ours - theirs).abs().max() < 1e-4


def test_transcribing_with_a_prompt_decodes_as_transformers_generate_with_prompt_ids(tiny_en):
    clip = load_audio(WAVS / "mini_0027.wav", 16000)  # "The dog found a ball in the garden."
    transcriber = Transcriber(tiny_en[1], prompt="A ball, a bull, a bell.")
    ours = transcriber.transcribe_waveforms([clip])[0]
    hf_tokenizer = transformers.WhisperTokenizerFast.from_pretrained(tiny_en[1])
    hf_model = transformers.WhisperForConditionalGeneration.from_pretrained(tiny_en[1]).eval()
    processor = transformers.WhisperFeatureExtractor.from_pretrained(tiny_en[1])
    inputs = processor(clip.numpy(), sampling_rate=16000, return_tensors="pt")
    prompt_ids = torch.tensor(hf_tokenizer.get_prompt_ids("A ball, a bull, a bell."))
    generated = hf_model.generate(inputs.input_features, prompt_ids=prompt_ids, max_new_tokens=40)
    theirs = hf_tokenizer.decode(generated[0], skip_special_tokens=True).strip()
    assert ours == theirs
    # the prompt is what makes tiny.en hear "ball" where, unprompted, it hears "bull"
    assert ours == "The dog found a ball in the garden."
    assert Transcriber(tiny_en[1]).transcribe_waveforms([clip])[0] == "The dog found a bull in the garden."


def test_each_utterance_is_prompted_in_its_own_language_and_unknown_ones_are_skipped(tmp_path):
    tokenizer = train_whisper_tokenizer(["the cat", "die Katze", "le chat"], vocab_size=300, multilingual=True,
                                        languages=["en", "de"])
    utterances = _manifest(tmp_path, [{"text": "die Katze", "lang": "de"}, {"text": "the cat"},
                                      {"text": "le chat", "lang": "fr"}])
    dataset = _dataset(utterances, tokenizer)
    assert len(dataset) == 2 and dataset.skipped == {"unusable prompt, language or segments": 1}
    german, default = dataset[0]["prefix_ids"], dataset[1]["prefix_ids"]
    ids = tokenizer.generation_config["lang_to_id"]
    assert german == [tokenizer.prefix_ids[0], ids["<|de|>"], *tokenizer.prefix_ids[2:]]
    assert default == tokenizer.prefix_ids and default[1] == ids["<|en|>"]
    assert tokenizer.prefix_for("de") == german and tokenizer.prefix_for("<|en|>") == default
