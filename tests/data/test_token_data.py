import dataclasses
import math
from pathlib import Path

import pytest
import torch
from tiny_tokenizers import one_torch_thread, tiny_codec, tiny_hubert  # noqa: F401 (an autouse fixture)

from speechtrain.data.semantic import KMeans
from speechtrain.data.token_data import SoundStormCollator, TokenDataModule, TokenDataset
from speechtrain.data.token_shards import TokenizedUtterance, tokenize_corpus
from speechtrain.models.soundstorm.modeling import semantic_frame_indices
from speechtrain.train import BUNDLED_DATA_DIR

MINI = BUNDLED_DATA_DIR / "mini"


def utterance(name: str, frames: int, semantic_frames: int, levels: int = 2) -> TokenizedUtterance:
    """acoustic[t, q] = 10 * t + q + 1 and semantic[s] = s + 1, so a crop shows where it came from."""
    acoustic = 10 * torch.arange(frames)[:, None] + torch.arange(levels) + 1
    return TokenizedUtterance(name, f"text of {name}", None, frames / 75, acoustic, torch.arange(semantic_frames) + 1)


def test_collator_pads_and_masks():
    batch = SoundStormCollator()([utterance("a", 5, 4), utterance("b", 3, 2)])
    assert batch["ids"] == ["a", "b"] and batch["texts"] == ["text of a", "text of b"]
    assert batch["codes"].shape == (2, 5, 2) and batch["codes"].dtype == torch.long
    assert batch["frame_mask"].tolist() == [[True] * 5, [True] * 3 + [False] * 2]
    assert batch["codes"][1, :, 0].tolist() == [1, 11, 21, 0, 0]
    assert batch["semantic_ids"].tolist() == [[1, 2, 3, 4], [1, 2, 0, 0]]
    assert batch["semantic_mask"].tolist() == [[True] * 4, [True, True, False, False]]


def test_crops_are_random_and_time_aligned():
    torch.manual_seed(0)
    collator = SoundStormCollator(max_frames=30, acoustic_rate=75, semantic_rate=50)
    assert collator.max_seconds == pytest.approx(0.4)
    starts = set()
    for _ in range(20):
        batch = collator([utterance("long", 150, 99), utterance("short", 20, 13)])
        first = batch["codes"][0, :, 0]
        start = (int(first[0]) - 1) // 10
        starts.add(start)
        assert first.tolist() == [10 * t + 1 for t in range(start, start + 30)]
        semantic = batch["semantic_ids"][0][batch["semantic_mask"][0]]
        expected = list(range(start * 2 // 3 + 1, min((start + 29) * 2 // 3 + 1, 99) + 1))
        assert semantic.tolist() == expected
        assert batch["frame_mask"][1].sum() == 20 and batch["semantic_mask"][1].sum() == 13  # short: uncut
    assert len(starts) > 5 and all(start % 3 == 0 for start in starts)


@pytest.mark.parametrize("rates", [(75, 50), (75, 49.9), (150, 50)])
def test_every_cropped_codec_frame_reads_its_uncropped_semantic_frame(rates):
    """A property over random crops (lengths, crop sizes, starts): the semantic frame each codec frame reads in the
    model is the one it reads in the whole utterance."""
    acoustic_rate, semantic_rate = rates
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    for _ in range(200):
        frames = int(torch.randint(2, 400, (), generator=generator))
        exact = math.floor(frames * semantic_rate / acoustic_rate)  # HuBERT may give a frame or two fewer
        semantic_frames = max(1, exact - int(torch.randint(0, 3, (), generator=generator)))
        max_frames = int(torch.randint(1, frames + 1, (), generator=generator))
        item = utterance("u", frames, semantic_frames)
        uncropped = semantic_frame_indices(frames, torch.tensor([semantic_frames]), semantic_rate, acoustic_rate)[0]
        batch = SoundStormCollator(max_frames, acoustic_rate, semantic_rate)([item])
        start = (int(batch["codes"][0, 0, 0]) - 1) // 10
        cropped_length = batch["semantic_mask"][0].sum()
        reads = semantic_frame_indices(max_frames, cropped_length[None], semantic_rate, acoustic_rate)[0]
        cropped_ids = batch["semantic_ids"][0, reads]  # semantic[s] = s + 1: the id tells the frame
        assert torch.equal(cropped_ids - 1, uncropped[start : start + max_frames]), (frames, max_frames, start)


def test_validation_crops_are_fixed_per_utterance():
    collator = SoundStormCollator(max_frames=30).for_validation()
    items = [utterance("a", 150, 99), utterance("b", 150, 99)]
    first = collator(items)
    torch.manual_seed(123)  # the global generator does not matter, nor the batch an item is in
    assert torch.equal(collator(items)["codes"], first["codes"])
    assert torch.equal(collator(items[1:])["codes"][0], first["codes"][1])
    starts = {(int(collator([utterance(name, 150, 99)])["codes"][0, 0, 0]) - 1) // 10 for name in "abcdefgh"}
    assert len(starts) > 3  # different utterances, different crops


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    return tokenize_corpus({"format": "ljspeech", "path": str(MINI), "limit": 6}, tmp_path_factory.mktemp("t") / "tok",
                           tiny_codec(), tiny_hubert(), shard_size=4, kmeans_clusters=8, kmeans_utterances=2,
                           kmeans_iterations=5)


def test_datamodule_batches_cover_the_data(tokens):
    module = TokenDataModule(tokens, SoundStormCollator(), max_batch_seconds=5.0, val_fraction=0.34, seed=0)
    module.setup("fit")
    assert module.token_info["codec"]["frame_rate"] == 75 and module.token_info["semantic"]["num_clusters"] == 8
    assert len(module.train_dataset) == 4 and len(module.val_dataset) == 2
    train_ids = [i for batch in module.train_dataloader() for i in batch["ids"]]
    val_ids = [i for batch in module.val_dataloader() for i in batch["ids"]]
    assert sorted(train_ids + val_ids) == [f"mini_000{i}" for i in range(1, 7)]
    for batch in module.train_dataloader():
        longest = batch["frame_mask"].sum(1).max() / 75
        assert len(batch["ids"]) * longest <= 5.0 + 1 / 75
        assert batch["codes"].shape[2] == 8 and batch["codes"].max() < 1024 and batch["semantic_ids"].max() < 8
        assert batch["codes"].dtype == batch["semantic_ids"].dtype == torch.long
    assert isinstance(TokenDataset(module.train_dataset.utterances)[0], TokenizedUtterance)
    assert module.train_dataset[0].acoustic.dtype == module.train_dataset[0].semantic.dtype == torch.int16

    with pytest.raises(ValueError, match="acoustic_rate=50.0 differs .* 75"):
        TokenDataModule(tokens, SoundStormCollator(acoustic_rate=50.0), max_batch_seconds=5.0).setup()


def test_val_dir_needs_the_same_kmeans(tokens, tmp_path):
    spec = {"format": "ljspeech", "path": str(MINI), "limit": 2}
    shared = tiny_hubert()
    shared.kmeans = KMeans.load(tokens / "kmeans.safetensors")
    same = tokenize_corpus(spec, tmp_path / "same", tiny_codec(), shared, kmeans_clusters=8)
    module = TokenDataModule(tokens, SoundStormCollator(), max_batch_seconds=5.0, val_fraction=0.0, val_dir=same)
    module.setup()
    assert len(module.val_dataset) == 2 and len(module.train_dataset) == 6
    refitted = tokenize_corpus(spec, tmp_path / "refitted", tiny_codec(), tiny_hubert(), kmeans_clusters=8,
                               kmeans_utterances=2, kmeans_iterations=5, seed=1)
    with pytest.raises(ValueError, match="different k-means"):
        TokenDataModule(tokens, SoundStormCollator(), max_batch_seconds=5.0, val_fraction=0.0,
                        val_dir=refitted).setup()


def test_int16_tokens_make_the_batches_of_long_ones():
    """Shards load as int16; every collator gives the batches it gives long ids (Bark's coarse ids add offsets
    above 10,000 to the codes, its fine windows pad with 1024, SoundStorm pads with 0)."""
    from speechtrain.data.bark_data import bark_collator
    from speechtrain.models.bark.tokenizer import BarkTextTokenizer

    tokenizer = BarkTextTokenizer.from_pretrained(BUNDLED_DATA_DIR / "bark_text_mini")
    generator = torch.Generator().manual_seed(0)
    wide = [TokenizedUtterance(f"u{i}", "The cat sleeps.", None, frames / 75,
                               torch.randint(0, 1024, (frames, 8), generator=generator),
                               torch.randint(0, 10_000, (frames * 2 // 3,), generator=generator))
            for i, frames in enumerate((1100, 90))]
    narrow = [dataclasses.replace(u, acoustic=u.acoustic.short(), semantic=u.semantic.short()) for u in wide]
    collators = [SoundStormCollator(max_frames=60).for_validation(),
                 *(bark_collator(kind, tokenizer, seed=0).for_validation() if kind != "semantic"
                   else bark_collator(kind, tokenizer) for kind in ("semantic", "coarse_acoustics", "fine_acoustics"))]
    for collator in collators:
        expected, batch = collator(wide), collator(narrow)
        for key, value in expected.items():
            if isinstance(value, torch.Tensor):
                assert batch[key].dtype == value.dtype and torch.equal(batch[key], value), (type(collator), key)
