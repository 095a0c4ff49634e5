import io
import json

import pytest
import sentencepiece

from speechtrain.models.speech2text.tokenizer import (
    Speech2TextTokenizer,
    main,
    train_s2t_tokenizer,
    train_s2t_tokenizer_on_corpus,
)
from speechtrain.train import BUNDLED_DATA_DIR

transformers = pytest.importorskip("transformers")

MINI = {"format": "ljspeech", "path": str(BUNDLED_DATA_DIR / "mini")}
TEXTS = ["The cat sleeps by the warm window.", "Where did you put the blue book?", "unseen wörds, café — ok?",
         "  two  spaces", "please open the door for the dog"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_s2t_tokenizer_on_corpus(MINI, vocab_size=128)


def test_training_is_deterministic_with_fairseq_special_ids(tokenizer):
    again = train_s2t_tokenizer_on_corpus(MINI, vocab_size=128)
    assert again.sp_model == tokenizer.sp_model and again.vocab == tokenizer.vocab
    assert len(tokenizer) == 128
    assert [tokenizer.pieces[i] for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert (tokenizer.bos_id, tokenizer.pad_id, tokenizer.eos_id, tokenizer.unk_id) == (0, 1, 2, 3)
    assert tokenizer.prefix_ids == [2]  # fairseq and transformers start decoding from </s>
    assert train_s2t_tokenizer_on_corpus(MINI, vocab_size=100).vocab != tokenizer.vocab


def test_text_round_trip_and_special_tokens_dropped(tokenizer):
    for text in ["The cat sleeps by the warm window.", "Where did you put the blue book?"]:
        ids = tokenizer.encode(text)
        assert min(ids) > 3 and len(ids) < len(text)  # no special ids; pieces longer than characters
        assert tokenizer.decode(ids) == text
        assert tokenizer.decode(tokenizer.prefix_ids + ids + [tokenizer.eos_id, tokenizer.pad_id]) == text
    assert tokenizer.unk_id in tokenizer.encode("ö")  # a character the corpus never had


def test_transformers_loads_what_we_save_and_encodes_the_same(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    assert {"sentencepiece.bpe.model", "vocab.json", "tokenizer_config.json"} <= {p.name for p in tmp_path.iterdir()}
    theirs = transformers.Speech2TextTokenizer.from_pretrained(tmp_path)
    assert (theirs.bos_token_id, theirs.pad_token_id, theirs.eos_token_id, theirs.unk_token_id) == (0, 1, 2, 3)
    assert len(theirs) == len(tokenizer)
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert theirs.encode(text, add_special_tokens=False) == ids, text
        assert theirs.encode(text) == ids + [tokenizer.eos_id]  # transformers' labels: text + </s>
        assert theirs.decode(ids, skip_special_tokens=True) == tokenizer.decode(ids)

    theirs.save_pretrained(tmp_path / "theirs")
    loaded = Speech2TextTokenizer.from_pretrained(tmp_path / "theirs")
    assert loaded.vocab == tokenizer.vocab and all(loaded.encode(t) == tokenizer.encode(t) for t in TEXTS)


def test_lowercase_vocabulary(tmp_path):
    lower = train_s2t_tokenizer_on_corpus(MINI, vocab_size=100, lowercase=True)
    assert lower.encode("The CAT Sleeps") == lower.encode("the cat sleeps")
    assert all(piece == piece.lower() for piece in lower.vocab)
    lower.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["do_lower_case"] is True
    reloaded = Speech2TextTokenizer.from_pretrained(tmp_path)
    theirs = transformers.Speech2TextTokenizer.from_pretrained(tmp_path)
    assert reloaded.encode("The Cat") == theirs.encode("the cat", add_special_tokens=False)


def test_upper_case_checkpoints_decode_in_upper_case(tokenizer, tmp_path):
    """fairseq's LibriSpeech vocabularies are lower-case with do_upper_case: input is lower-cased, output upper."""
    tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "do_upper_case": True}))
    upper = Speech2TextTokenizer.from_pretrained(tmp_path)
    theirs = transformers.Speech2TextTokenizer.from_pretrained(tmp_path)
    ids = upper.encode("THE WARM WINDOW")
    assert ids == tokenizer.encode("the warm window")
    assert upper.decode(ids) == "THE WARM WINDOW" == theirs.decode(ids, skip_special_tokens=True)


def test_multilingual_vocabulary_prompts_with_the_target_language(tmp_path):
    languages = ("pt", "fr", "ru", "nl", "ro", "it", "es", "de")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["le chat dort", "der Hund schläft", "o gato dorme"] * 5), model_writer=model,
        vocab_size=35, bos_id=0, pad_id=1, eos_id=2, unk_id=3, minloglevel=2,
        user_defined_symbols=[f"<lang:{code}>" for code in languages],
    )
    Speech2TextTokenizer(model.getvalue()).save_pretrained(tmp_path)
    config_path = tmp_path / "tokenizer_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "lang_codes": "mustc",
                                       "tgt_lang": "fr"}))
    ours = Speech2TextTokenizer.from_pretrained(tmp_path)
    theirs = transformers.Speech2TextTokenizer.from_pretrained(tmp_path)
    french = theirs.convert_tokens_to_ids("<lang:fr>")
    assert ours.prefix_ids == [2, french] and ours.language == "fr"
    ids = ours.encode("le chat dort")
    assert theirs.encode("le chat dort") == [french] + ids + [2]  # transformers: [<lang>] + text + </s>
    assert ours.decode(ours.prefix_ids + ids) == "le chat dort"
    german = Speech2TextTokenizer.from_pretrained(tmp_path, language="de")
    assert german.prefix_ids == [2, theirs.convert_tokens_to_ids("<lang:de>")]
    with pytest.raises(ValueError, match="language='xx'"):
        Speech2TextTokenizer.from_pretrained(tmp_path, language="xx")


def test_mistakes_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"mini: .*Vocabulary size too high \(5000\)"):
        train_s2t_tokenizer_on_corpus(MINI, vocab_size=5000)
    with pytest.raises(ValueError, match="model_type='wordpiece'"):
        train_s2t_tokenizer(["some text"], model_type="wordpiece")
    with pytest.raises(ValueError, match="no non-empty transcripts"):
        train_s2t_tokenizer(["", "  "])
    with pytest.raises(FileNotFoundError, match="sentencepiece.bpe.model"):
        Speech2TextTokenizer.from_pretrained(tmp_path)


def test_command_line_trains_a_vocabulary_folder(tmp_path, capsys):
    main([MINI["path"], str(tmp_path / "vocab"), "--format", "ljspeech", "--vocab-size", "64", "--model-type", "bpe"])
    assert "64-token bpe vocabulary" in capsys.readouterr().out
    trained = Speech2TextTokenizer.from_pretrained(tmp_path / "vocab")
    assert len(trained) == 64 and trained.decode(trained.encode("The small dog.")) == "The small dog."
    with pytest.raises(SystemExit):
        main(["/no/such/corpus", str(tmp_path / "other"), "--format", "ljspeech"])
