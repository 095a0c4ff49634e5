import json
import shutil

import pytest
import torch

from speechtrain.data.bark_data import (
    BarkCoarseCollator,
    BarkFineCollator,
    BarkSemanticCollator,
    BarkTokenDataModule,
    check_token_info,
)
from speechtrain.data.token_shards import TokenizedUtterance
from speechtrain.models.bark.layouts import coarse_windows, fine_windows
from speechtrain.models.bark.tokenizer import BarkTextTokenizer
from speechtrain.train import BUNDLED_DATA_DIR

TOKENS = BUNDLED_DATA_DIR / "mini_tokens"


@pytest.fixture(scope="module")
def tokenizer():
    return BarkTextTokenizer.from_pretrained(BUNDLED_DATA_DIR / "bark_text_mini")


def utterance(name, frames, semantic_frames, seed=0, text="The cat sleeps by the warm window."):
    generator = torch.Generator().manual_seed(seed)
    return TokenizedUtterance(name, text, None, frames / 75, torch.randint(0, 1024, (frames, 8), generator=generator),
                              torch.randint(0, 100, (semantic_frames,), generator=generator))


def test_semantic_batch_is_bark_prompt_then_targets_and_padding_is_unscored(tokenizer):
    long, short = utterance("a", 30, 12, seed=1), utterance("b", 20, 7, seed=2, text="We have three red apples today.")
    batch = BarkSemanticCollator(tokenizer)([long, short])
    assert batch["ids"] == ["a", "b"] and batch["input_ids"].shape == (2, 256 + 257 + 12)
    assert batch["labels"].shape == batch["attention_mask"].shape == (2, 256 + 1 + 12)
    text = tokenizer.encode(short.text)
    row = batch["input_ids"][1]
    assert row[: len(text)].tolist() == [t + 10_048 for t in text]
    assert (row[len(text) : 256] == 129_595).all() and (row[256:512] == 10_000).all() and row[512] == 129_599
    assert row[513 : 513 + 7].tolist() == short.semantic.tolist()  # the 7th id is the input of the end token
    labels = batch["labels"][1]
    assert (labels[:256] == -100).all()
    assert labels[256 : 256 + 8].tolist() == short.semantic.tolist() + [10_000]  # ... then the end token
    assert (labels[264:] == -100).all() and batch["attention_mask"][1].tolist() == [1] * 264 + [0] * 5
    assert batch["labels"][0, 256:].tolist() == long.semantic.tolist() + [10_000]


def test_semantic_targets_are_cut_to_the_block_and_a_big_vocabulary_is_refused(tokenizer):
    batch = BarkSemanticCollator(tokenizer, block_size=300)([utterance("a", 30, 100)])
    assert batch["labels"].shape == (1, 300) and (batch["labels"][0, 256:] != 10_000).all()  # cut: no end token
    with pytest.raises(ValueError, match="has 200000 tokens, but Bark's semantic input holds 119547"):
        BarkSemanticCollator(type("Big", (), {"__len__": lambda self: 200_000})())
    with pytest.raises(ValueError, match="need the text tokenizer"):
        BarkSemanticCollator(None)


def test_coarse_rows_are_generation_windows_of_codebooks_0_and_1():
    utterances = [utterance("a", 75, 50, seed=3), utterance("b", 40, 27, seed=4)]
    batch = BarkCoarseCollator()(utterances)
    a, b = utterances
    first = a.acoustic[0]
    row, labels = batch["input_ids"][0], batch["labels"][0]
    assert row[:50].tolist() == a.semantic.tolist() and (row[50:256] == 12_048).all() and row[256] == 12_050
    assert labels[256:260].tolist() == [first[0] + 10_000, first[1] + 11_024, a.acoustic[1, 0] + 10_000,
                                        a.acoustic[1, 1] + 11_024]
    windows = coarse_windows(a.semantic.tolist(), a.acoustic[:, :2].T) + coarse_windows(b.semantic.tolist(),
                                                                                       b.acoustic[:, :2].T)
    assert len(windows) == 3 + 2 and batch["ids"] == ["a"] * 3 + ["b"] * 2  # 150 and 80 tokens, windows of 60
    for index, (input_ids, window_labels) in enumerate(windows):
        length = len(input_ids)
        assert batch["input_ids"][index, :length].tolist() == input_ids
        assert batch["labels"][index, :length].tolist() == window_labels
        assert (batch["labels"][index, length:] == -100).all()
        assert batch["attention_mask"][index].sum() == length
    scored = int((batch["labels"] != -100).sum())
    assert scored == 2 * (75 + 40)  # every coarse token of both utterances is scored exactly once


def test_windows_per_utterance_draws_a_seeded_subset():
    utterances = [utterance("a", 150, 100, seed=5)]
    every = BarkCoarseCollator()(utterances)
    some = BarkCoarseCollator(windows_per_utterance=2, seed=7)(utterances)
    again = BarkCoarseCollator(windows_per_utterance=2, seed=7)(utterances)
    assert every["input_ids"].shape[0] == 5 and some["input_ids"].shape[0] == 2
    assert torch.equal(some["input_ids"], again["input_ids"])
    rows = [r[r != 12_048].tolist() for r in every["input_ids"]]
    assert all(r[r != 12_048].tolist() in rows for r in some["input_ids"])


def test_validation_copies_draw_the_same_rows_every_pass_whatever_the_batch():
    utterances = [utterance("a", 1100, 10, seed=6), utterance("b", 3000, 10, seed=7)]
    for collator in (BarkCoarseCollator(windows_per_utterance=2), BarkFineCollator(windows_per_utterance=2)):
        validation = collator.for_validation()
        first = validation(utterances)
        torch.manual_seed(3)  # training moves torch's global generator on between passes
        assert all(torch.equal(first[key], validation(utterances)[key]) for key in ("input_ids", "labels"))
        alone = validation(utterances[1:])
        assert torch.equal(alone["input_ids"], first["input_ids"][first["ids"].index("b"):])
        assert not collator.fixed_draws and validation.fixed_draws  # the training collator draws as before
    targets = {tuple(BarkFineCollator().for_validation()([utterance(name, 3000, 10)])["codebook_idx"].tolist())
               for name in "abcdef"}
    assert len(targets) > 3  # each utterance its own draws


def test_fine_rows_mask_the_target_codebook_and_above_on_the_predicted_frames():
    utterances = [utterance("a", 1100, 10, seed=6), utterance("b", 90, 10, seed=7)]
    batch = BarkFineCollator(seed=0)(utterances)
    windows = fine_windows(utterances[0].acoustic) + fine_windows(utterances[1].acoustic)
    assert batch["input_ids"].shape == (len(windows), 1024, 8) == (3, 1024, 8) and batch["ids"] == ["a", "a", "b"]
    assert batch["codebook_idx"].min() >= 2 and batch["codebook_idx"].max() < 8
    for index, window in enumerate(windows):
        book = int(batch["codebook_idx"][index])
        new = slice(window.new_from, window.new_to)
        assert torch.equal(batch["labels"][index, new], window.codes[new, book])
        assert (batch["labels"][index, : window.new_from] == -100).all()
        assert (batch["labels"][index, window.new_to :] == -100).all()
        assert (batch["input_ids"][index, window.new_from :, book:] == 1024).all()
        assert torch.equal(batch["input_ids"][index, :, :book], window.codes[:, :book])
    short = batch["input_ids"][2]
    assert torch.equal(short[:90, :2], utterances[1].acoustic[:, :2]) and (short[90:] == 1024).all()
    second = windows[1]  # the last pass over `a` ends at its last frame (starts at 1100 - 1024) and predicts only
    # the frames the first did not reach
    assert (second.new_from, second.new_to) == (1024 - 76, 1100 - 76)
    draws = torch.stack([BarkFineCollator(seed=s)(utterances)["codebook_idx"] for s in range(20)])
    assert set(draws.flatten().tolist()) == set(range(2, 8))


def info(codebook_size=1024, num_levels=8, frame_rate=75, num_clusters=100, semantic_rate=50.0):
    return {"codec": {"codebook_size": codebook_size, "num_levels": num_levels, "frame_rate": frame_rate},
            "semantic": {"num_clusters": num_clusters, "frame_rate": semantic_rate}}


def test_token_info_must_fit_bark():
    for kind in ("semantic", "coarse_acoustics", "fine_acoustics"):
        check_token_info(info(), kind)
    check_token_info(info(num_levels=32), "fine_acoustics")  # 24 kbps: the first 8 residual levels are 6 kbps'
    check_token_info(info(codebook_size=2048, num_levels=4), "semantic")  # the semantic model reads no codes
    with pytest.raises(ValueError, match=r"x/tokens.json: .* fine_acoustics model: codec.codebook_size is 2048.*1024 "
                                         r"entries; codec.num_levels is 4, Bark needs 8"):
        check_token_info(info(codebook_size=2048, num_levels=4), "fine_acoustics", "x/tokens.json")
    with pytest.raises(ValueError, match="semantic.num_clusters is 20000, Bark's semantic vocabulary has 10000"):
        check_token_info(info(num_clusters=20_000), "coarse_acoustics")
    with pytest.raises(ValueError, match="semantic.frame_rate is 25.0"):
        check_token_info(info(semantic_rate=25.0), "semantic")
    with pytest.raises(ValueError, match="codec.frame_rate is 50"):
        check_token_info(info(frame_rate=50), "coarse_acoustics")


@pytest.mark.parametrize("kind", ["semantic", "coarse_acoustics", "fine_acoustics"])
def test_datamodule_batches_the_mini_tokens(kind, tokenizer):
    module = BarkTokenDataModule(TOKENS, kind, max_batch_seconds=5.0, tokenizer=tokenizer, windows_per_utterance=1,
                                 val_fraction=0.1, seed=0)
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert {"input_ids", "labels", "ids", "texts"} <= set(batch) and (batch["labels"] != -100).any()
    assert len(batch["ids"]) == batch["input_ids"].shape[0] == len(batch["texts"])  # one window per utterance


def test_datamodule_refuses_tokens_that_do_not_fit(tmp_path):
    folder = tmp_path / "tokens"
    shutil.copytree(TOKENS, folder)
    recorded = json.loads((folder / "tokens.json").read_text())
    recorded["codec"]["num_levels"] = 2
    (folder / "tokens.json").write_text(json.dumps(recorded))
    with pytest.raises(ValueError, match=f"{folder}/tokens.json: .*codec.num_levels is 2"):
        BarkTokenDataModule(folder, "fine_acoustics", max_batch_seconds=5.0).setup()
    with pytest.raises(ValueError, match="kind='acoustic' is not one of"):
        BarkTokenDataModule(folder, "acoustic", max_batch_seconds=5.0)


@pytest.fixture(scope="module")
def pretrained_bark_coarse(tmp_path_factory):
    """A random transformers Bark coarse model, saved as a pretrained folder (Bark's coarse vocabulary, tiny)."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("bark_coarse")
    config = transformers.BarkCoarseConfig(input_vocab_size=12096, output_vocab_size=12096, block_size=1024,
                                           num_layers=1, num_heads=2, hidden_size=16)
    torch.manual_seed(0)
    transformers.BarkCoarseModel(config).save_pretrained(folder)
    return folder


def test_pretrained_bark_refuses_semantic_ids_that_are_not_barks_unless_told(compose, tmp_path, pretrained_bark_coarse):
    from speechtrain.train import build

    recipe = ["recipe=bark_coarse", f"model.pretrained={pretrained_bark_coarse}", "data.windows_per_utterance=1"]
    _, refusing = build(compose(*recipe, output_dir=tmp_path / "refused"))
    refusal = rf"{TOKENS}/tokens.json: its semantic ids come from hubert_base with 100-cluster k-means, not from "
    with pytest.raises(ValueError, match=refusal + r"Bark's .*data.allow_foreign_semantic_ids=true"):
        refusing.setup("fit")

    task, told = build(compose(*recipe, "data.allow_foreign_semantic_ids=true", output_dir=tmp_path / "told"))
    told.setup("fit")
    batch = next(iter(told.train_dataloader()))
    assert torch.isfinite(task.training_loss(batch)[0])

    compatible = tmp_path / "bark_ids"  # the same folder, as a Bark-compatible semantic tokenizer would record it
    shutil.copytree(TOKENS, compatible)
    recorded = json.loads((compatible / "tokens.json").read_text())
    recorded["semantic"]["bark_compatible"] = True
    (compatible / "tokens.json").write_text(json.dumps(recorded))
    _, accepting = build(compose(*recipe, f"data.tokens_dir={compatible}", output_dir=tmp_path / "compatible"))
    accepting.setup("fit")


def test_the_fine_model_reads_no_semantic_ids_so_a_pretrained_one_takes_any_tokens():
    module = BarkTokenDataModule(TOKENS, "fine_acoustics", max_batch_seconds=5.0, pretrained="models/bark/fine")
    module.setup("fit")
    assert len(module.train_dataset) > 0


def test_a_voice_preset_in_the_config_is_the_history_of_every_training_row(compose, tmp_path):
    from speechtrain.models.bark.cli import voice_main
    from speechtrain.models.bark.layouts import coarse_history
    from speechtrain.models.bark.voice import load_voice
    from speechtrain.train import build

    preset = tmp_path / "voice.npz"
    voice_main(["--tokens", str(TOKENS), "--utterance", "mini_0002", "--out", str(preset)])
    task, data = build(compose("recipe=bark_mini_coarse", f"data.voice_preset={preset}", output_dir=tmp_path / "run"))
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    _, tokens = coarse_history(load_voice(preset))
    # a first window: the preset's coarse tokens follow the infer token, and scoring starts right after them
    first_window = (batch["labels"] != -100).float().argmax(dim=1) == 256 + len(tokens)
    rows = first_window.nonzero()[:, 0]
    assert len(rows) > 0 and all(batch["input_ids"][row, 257 : 257 + len(tokens)].tolist() == tokens for row in rows)
    assert torch.isfinite(task.training_loss(batch)[0])
