import json

import pytest

from speechtrain.models.bark.tokenizer import BarkTextTokenizer

transformers = pytest.importorskip("transformers")

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "Hello", "caf", "##é", "##e", "cafe",
         "na", "##ïve", ",", ".", "!", "?", "'", "s", "it", "l", "##'", "été", "Été", "un", "##believ", "##able",
         "中", "文", "-", "##s"]
TEXTS = ["Hello, world!", "hello world.", "Café naïve?", "It's l'été - un-believable!!", "unbelievable",
         "中文 hello", "  Hello\tworld \n", "zzz unknown"]


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    return tmp_path


@pytest.mark.parametrize("do_lower_case", [False, True])
def test_ids_equal_transformers_bert_tokenizer(folder, do_lower_case):
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": do_lower_case}))
    ours = BarkTextTokenizer.from_pretrained(folder)
    reference = transformers.BertTokenizer(str(folder / "vocab.txt"), do_lower_case=do_lower_case)
    for text in TEXTS:
        expected = reference(text, add_special_tokens=False)["input_ids"]
        assert ours.encode(text) == expected, text
    assert ours.encode("café")[:2] == ([VOCAB.index("caf"), VOCAB.index("##é")] if not do_lower_case
                                       else [VOCAB.index("cafe")])


def test_save_round_trip_and_transformers_reads_it(folder, tmp_path):
    ours = BarkTextTokenizer.from_pretrained(folder)
    out = tmp_path / "saved"
    ours.save_pretrained(out)
    again = BarkTextTokenizer.from_pretrained(out)
    reference = transformers.BertTokenizer.from_pretrained(str(out))
    for text in TEXTS:
        assert again.encode(text) == ours.encode(text) == reference(text, add_special_tokens=False)["input_ids"]
    assert len(again) == len(VOCAB)


def test_missing_vocab_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        BarkTextTokenizer.from_pretrained(tmp_path)
