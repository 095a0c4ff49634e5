import json

import pytest

from speechtrain.models.whisper.tokenizer import (
    WhisperTokenizer,
    train_whisper_tokenizer,
    train_whisper_tokenizer_on_corpus,
)

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "speech recognition turns sound into text",
    "a naive model will overfit a tiny corpus",
    "numbers like 42 and 1999 appear, too!",
] * 5

MULTILINGUAL = {  # ids as in openai/whisper-tiny: nothing in the tokenizer may assume them
    "decoder_start_token_id": 50258, "eos_token_id": 50257, "pad_token_id": 50257, "is_multilingual": True,
    "lang_to_id": {"<|en|>": 50259, "<|de|>": 50261}, "task_to_id": {"translate": 50358, "transcribe": 50359},
    "no_timestamps_token_id": 50363, "suppress_tokens": [1, 2], "begin_suppress_tokens": [220, 50257],
}
ENGLISH_ONLY = {
    "decoder_start_token_id": 50257, "eos_token_id": 50256, "pad_token_id": 50256, "is_multilingual": False,
    "lang_to_id": {}, "task_to_id": {"translate": 50357, "transcribe": 50358}, "no_timestamps_token_id": 50362,
}


@pytest.fixture(scope="module")
def tokenizer():
    return train_whisper_tokenizer(CORPUS, vocab_size=320)


def test_text_round_trip_and_special_tokens_dropped(tokenizer):
    for text in ["the lazy fox", "unseen wörds, café & naïve — ok?", " leading space", "42"]:
        ids = tokenizer.encode(text)
        assert all(i not in tokenizer.prefix_ids + [tokenizer.eos_id] for i in ids)
        assert tokenizer.decode(ids) == text
        assert tokenizer.decode(tokenizer.prefix_ids + ids + [tokenizer.eos_id]) == text
    assert len(tokenizer.encode("the quick brown fox")) < len("the quick brown fox")  # merges were learned


def test_trained_layout_and_generation_config(tokenizer):
    assert len(tokenizer) == 320
    vocab = tokenizer.tokenizer.get_vocab()
    control = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
               "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
    assert [vocab[token] for token in control] == list(range(320 - len(control), 320))
    assert tokenizer.prefix_ids == [vocab["<|startoftranscript|>"], vocab["<|notimestamps|>"]]
    assert tokenizer.eos_id == tokenizer.pad_id == vocab["<|endoftext|>"]
    assert tokenizer.begin_suppress_tokens == [vocab["Ġ"], vocab["<|endoftext|>"]]
    multilingual = train_whisper_tokenizer(CORPUS, vocab_size=320, multilingual=True, languages=("de", "en"))
    vocab = multilingual.tokenizer.get_vocab()
    assert multilingual.prefix_ids == [vocab[t] for t in ("<|startoftranscript|>", "<|de|>", "<|transcribe|>",
                                                          "<|notimestamps|>")]
    with pytest.raises(ValueError, match="too small"):
        train_whisper_tokenizer(CORPUS, vocab_size=200)


def test_training_is_deterministic():
    first = train_whisper_tokenizer(CORPUS, vocab_size=300)
    second = train_whisper_tokenizer(iter(CORPUS), vocab_size=300)
    assert first.tokenizer.to_str() == second.tokenizer.to_str()
    assert first.generation_config == second.generation_config


def test_training_on_a_corpus_reads_its_transcripts(tmp_path):
    lines = [json.dumps({"audio_filepath": f"{i}.wav", "text": f" {text} ", "duration": 1.0})
             for i, text in enumerate(CORPUS)]
    (tmp_path / "train.jsonl").write_text("\n".join(lines))
    from_corpus = train_whisper_tokenizer_on_corpus({"format": "manifest", "path": str(tmp_path / "train.jsonl")},
                                                    vocab_size=300)
    assert from_corpus.tokenizer.to_str() == train_whisper_tokenizer(CORPUS, vocab_size=300).tokenizer.to_str()


def test_prefix_follows_generation_config(tokenizer):
    backend = tokenizer.tokenizer
    assert WhisperTokenizer(backend, ENGLISH_ONLY).prefix_ids == [50257, 50362]
    assert WhisperTokenizer(backend, ENGLISH_ONLY).eos_id == 50256
    assert WhisperTokenizer(backend, MULTILINGUAL, language="de").prefix_ids == [50258, 50261, 50359, 50363]
    translate = WhisperTokenizer(backend, MULTILINGUAL, language="<|en|>", task="translate")
    assert translate.prefix_ids == [50258, 50259, 50358, 50363]
    assert translate.suppress_tokens == [1, 2] and translate.begin_suppress_tokens == [220, 50257]
    forced = {**MULTILINGUAL, "forced_decoder_ids": [[1, 50261], [2, 50359], [3, 50363]]}
    assert WhisperTokenizer(backend, forced).language == "de"
    with pytest.raises(ValueError, match=r"needs language=\.\.\., one of \['de', 'en'\]"):
        WhisperTokenizer(backend, MULTILINGUAL)
    with pytest.raises(ValueError, match="'fr' is not in generation_config.json lang_to_id"):
        WhisperTokenizer(backend, MULTILINGUAL, language="fr")
    with pytest.raises(ValueError, match="English-only"):
        WhisperTokenizer(backend, ENGLISH_ONLY, task="translate")
    with pytest.raises(ValueError, match="no_timestamps_token_id"):
        WhisperTokenizer(backend, {k: v for k, v in ENGLISH_ONLY.items() if k != "no_timestamps_token_id"})


def test_save_and_load_round_trip(tmp_path):
    multilingual = train_whisper_tokenizer(CORPUS, vocab_size=320, multilingual=True, languages=("en", "de"))
    multilingual.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "generation_config.json").read_text())["language"] == "en"
    loaded = WhisperTokenizer.from_pretrained(tmp_path)
    assert loaded.prefix_ids == multilingual.prefix_ids and len(loaded) == len(multilingual)
    assert loaded.encode("the fox") == multilingual.encode("the fox")
    german = WhisperTokenizer.from_pretrained(tmp_path, language="de")
    assert german.prefix_ids[1] == multilingual.tokenizer.token_to_id("<|de|>")
    (tmp_path / "generation_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="generation_config.json: not found"):
        WhisperTokenizer.from_pretrained(tmp_path)


def test_saved_folder_loads_in_transformers(tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers")
    tokenizer.save_pretrained(tmp_path)
    hf = transformers.WhisperTokenizerFast.from_pretrained(tmp_path)
    text = "the quick brown fox, unseen wörds 42"
    ids = tokenizer.encode(text)
    assert hf.encode(text, add_special_tokens=False) == ids
    assert len(hf) == len(tokenizer)
    assert hf.eos_token_id == tokenizer.eos_id and hf.pad_token_id == tokenizer.pad_id
    assert hf.decode(tokenizer.prefix_ids + ids + [tokenizer.eos_id], skip_special_tokens=True) == text
    generation = transformers.GenerationConfig.from_pretrained(tmp_path)
    assert generation.decoder_start_token_id == tokenizer.prefix_ids[0]
    assert generation.no_timestamps_token_id == tokenizer.prefix_ids[-1]
    assert generation.eos_token_id == tokenizer.eos_id and not generation.is_multilingual
    processor = transformers.WhisperProcessor(transformers.WhisperFeatureExtractor(), hf)
    assert processor.tokenizer(text, add_special_tokens=False).input_ids == ids


def test_prefix_space_option_encodes_as_openai_trained_and_round_trips_through_transformers(tokenizer, tmp_path):
    """Off (the default, as transformers' fine-tuning): "the fox" as it is. On: as " the fox", the leading word one
    "Ġthe" token as openai's Whisper emits it; saved in tokenizer_config.json, read back here and by transformers."""
    transformers = pytest.importorskip("transformers")
    assert not tokenizer.add_prefix_space and tokenizer.encode("the fox") != tokenizer.encode(" the fox")
    spaced = WhisperTokenizer(tokenizer.tokenizer, tokenizer.generation_config, add_prefix_space=True)
    assert spaced.encode("the fox") == spaced.encode(" the fox") == tokenizer.encode(" the fox")
    assert spaced.decode(spaced.encode("the fox")).strip() == "the fox"

    spaced.save_pretrained(tmp_path)
    assert WhisperTokenizer.from_pretrained(tmp_path).add_prefix_space
    assert not WhisperTokenizer.from_pretrained(tmp_path, add_prefix_space=False).add_prefix_space
    hf = transformers.WhisperTokenizerFast.from_pretrained(tmp_path)
    assert hf.encode("the fox", add_special_tokens=False) == spaced.encode("the fox")

    trained = train_whisper_tokenizer(CORPUS, vocab_size=320, add_prefix_space=True)
    first = trained.tokenizer.id_to_token(trained.encode("the lazy dog")[0])
    assert trained.add_prefix_space and first == "Ġthe"  # the merges were learnt on " the ..." as encode sees it
