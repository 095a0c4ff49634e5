import lightning as L
import pytest
import torch

from speechtrain.data.corpora import CorpusSpec
from speechtrain.data.datamodule import AsrDataModule
from speechtrain.models.speech2text.features import Speech2TextFeatureExtractor
from speechtrain.models.whisper.features import WhisperFeatureExtractor

TEXTS = ["one small step", "hello world", "a quick test", "good morning", "see you soon", "thank you",
         "it is raining", "the end is near", "open the door", "close it", "yes", "not today"]


@pytest.fixture
def ljspeech(tmp_path, make_wav):
    """Twelve short clips (0.2 to 1.3 s) in an LJSpeech folder, plus one clip too long for a 2 s chunk."""
    root = tmp_path / "corpus"
    lines = []
    for number, text in enumerate(TEXTS):
        make_wav(root / "wavs" / f"u{number:02d}.wav", 0.2 + 0.1 * number)
        lines.append(f"u{number:02d}|{text}|{text}")
    make_wav(root / "wavs" / "long.wav", 3.0)
    lines.append("long|a long one|a long one")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def make_datamodule(train, fake_tokenizer, val=None, **overrides) -> AsrDataModule:
    settings = dict(max_batch_seconds=4.0, max_duration=2.0, max_label_tokens=40, seed=3)
    return AsrDataModule(train, val, fake_tokenizer, WhisperFeatureExtractor(chunk_length=2), **settings | overrides)


def test_val_fraction_holds_out_a_deterministic_disjoint_part(ljspeech, fake_tokenizer):
    modules = [make_datamodule({"format": "ljspeech", "path": str(ljspeech)}, fake_tokenizer, val_fraction=0.25)
               for _ in range(2)]
    for module in modules:
        module.setup("fit")
    train_ids = [u.id for u in modules[0].train_dataset.utterances]
    val_ids = [u.id for u in modules[0].val_dataset.utterances]
    held_out = len(val_ids) + sum(modules[0].val_dataset.skipped.values())
    assert held_out == round(0.25 * 13) and not set(train_ids) & set(val_ids)
    assert sorted(train_ids + val_ids) == [f"u{n:02d}" for n in range(12)]  # "long" is dropped
    assert val_ids == [u.id for u in modules[1].val_dataset.utterances]
    other_seed = make_datamodule({"format": "ljspeech", "path": str(ljspeech)}, fake_tokenizer, val_fraction=0.25,
                                 seed=4)
    other_seed.setup("fit")
    assert val_ids != [u.id for u in other_seed.val_dataset.utterances]


def test_loaders_give_design_batches_within_budget(ljspeech, fake_tokenizer, monkeypatch):
    monkeypatch.chdir(ljspeech.parent)
    module = make_datamodule(CorpusSpec("ljspeech", "corpus"), fake_tokenizer, val=CorpusSpec("ljspeech", "corpus"),
                             num_workers=2)
    module.setup("fit")
    batches = list(module.train_dataloader())
    assert sorted(i for b in batches for i in b["ids"]) == [f"u{n:02d}" for n in range(12)]
    durations = {u.id: d for u, d in zip(module.train_dataset.utterances, module.train_dataset.durations)}
    for batch in batches:
        size = len(batch["ids"])
        assert size * max(durations[i] for i in batch["ids"]) <= 4.0
        assert batch["input_features"].shape == (size, 80, 200)
        assert batch["attention_mask"].shape == (size, 200) and batch["labels"].shape[0] == size
    val_batches = list(module.val_dataloader())
    assert [i for b in val_batches for i in b["ids"]] == [i for b in module.val_dataloader() for i in b["ids"]]


def test_configuration_mistakes_are_explained(ljspeech, fake_tokenizer, tmp_path):
    spec = {"format": "ljspeech", "path": str(ljspeech)}
    with pytest.raises(ValueError, match="either a val corpus or data.val_fraction"):
        make_datamodule(spec, fake_tokenizer, val=spec, val_fraction=0.1)
    with pytest.raises(ValueError, match="longer than the feature extractor's 2 s chunk"):
        make_datamodule(spec, fake_tokenizer, max_duration=2.5)
    with pytest.raises(ValueError, match="cannot hold one utterance"):
        make_datamodule(spec, fake_tokenizer, max_batch_seconds=1.0)
    missing = make_datamodule({"format": "ljspeech", "path": str(tmp_path / "absent")}, fake_tokenizer)
    with pytest.raises(FileNotFoundError, match=f"LJSpeech layout.*{tmp_path / 'absent'}"):
        missing.setup("fit")
    nothing_usable = make_datamodule(spec, fake_tokenizer, max_label_tokens=5)
    with pytest.raises(ValueError, match="no usable training utterances"):
        nothing_usable.setup("fit")


class RecordingModule(L.LightningModule):
    """Records the utterance ids of every batch it sees, by epoch."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.train_ids: dict[int, list[str]] = {}
        self.val_ids: list[str] = []

    def training_step(self, batch, batch_idx):
        self.train_ids.setdefault(self.current_epoch, []).extend(batch["ids"])
        return (self.weight * batch["input_features"].mean()).sum()

    def validation_step(self, batch, batch_idx):
        self.val_ids.extend(batch["ids"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_sees_every_utterance_in_a_new_order_each_epoch(ljspeech, fake_tokenizer, tmp_path):
    module = make_datamodule({"format": "ljspeech", "path": str(ljspeech)}, fake_tokenizer, val_fraction=0.25,
                             max_batch_seconds=2.0)
    recorder = RecordingModule()
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", use_distributed_sampler=False, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(recorder, datamodule=module)
    train_ids = sorted(u.id for u in module.train_dataset.utterances)
    assert all(sorted(ids) == train_ids for ids in recorder.train_ids.values())
    assert len(recorder.train_ids) == 3 and len({tuple(ids) for ids in recorder.train_ids.values()}) == 3
    assert sorted(recorder.val_ids) == sorted([u.id for u in module.val_dataset.utterances] * 3)


def test_without_a_val_split_validation_is_off(ljspeech, fake_tokenizer):
    module = make_datamodule({"format": "ljspeech", "path": str(ljspeech)}, fake_tokenizer)
    module.setup("fit")
    assert module.val_dataset is None and module.val_dataloader() == []


def test_whisper_batches_are_budgeted_in_windows_not_in_audio(ljspeech, fake_tokenizer):
    """Every Whisper item is a full window (2 s here) whatever its audio: 4 s of budget hold two items, not the
    three to eight that 0.2-1.3 s clips would fill by their own lengths."""
    module = make_datamodule({"format": "ljspeech", "path": str(ljspeech)}, fake_tokenizer)
    module.setup("fit")
    batches = list(module.train_dataloader())
    assert sorted(i for batch in batches for i in batch["ids"]) == [f"u{n:02d}" for n in range(12)]
    assert max(len(batch["ids"]) for batch in batches) == 2
    assert all(len(batch["ids"]) * 2.0 <= 4.0 for batch in batches)
    with pytest.raises(ValueError, match=r"data.max_batch_seconds=1.5 cannot hold one 2 s chunk"):
        make_datamodule({"format": "ljspeech", "path": str(ljspeech)}, fake_tokenizer, max_batch_seconds=1.5,
                        max_duration=1.4)


def test_max_duration_null_is_the_feature_extractor_window(ljspeech, fake_tokenizer):
    assert make_datamodule({"format": "ljspeech", "path": str(ljspeech)}, fake_tokenizer, max_duration=None
                           ).max_duration == 2.0
    with pytest.raises(ValueError, match="data.max_duration is null"):
        AsrDataModule({"format": "ljspeech", "path": str(ljspeech)}, None, fake_tokenizer,
                      Speech2TextFeatureExtractor(), max_batch_seconds=4.0, max_duration=None, max_label_tokens=40)


@pytest.mark.parametrize("strict", [False, True])
def test_speech2text_skips_and_counts_audio_shorter_than_one_frame(ljspeech, fake_tokenizer, make_wav, strict):
    """A 10 ms clip has no 25 ms filterbank frame: it is dropped and counted when the corpus is checked instead of
    raising in the collator mid-epoch; strict mode names it."""
    make_wav(ljspeech / "wavs" / "click.wav", 0.01)
    with (ljspeech / "metadata.csv").open("a") as metadata:
        metadata.write("click|a click|a click\n")
    module = AsrDataModule({"format": "ljspeech", "path": str(ljspeech)}, None, fake_tokenizer,
                           Speech2TextFeatureExtractor(), max_batch_seconds=4.0, max_duration=4.0,
                           max_label_tokens=40, strict=strict)
    if strict:
        with pytest.raises(ValueError, match=r"click.wav: shorter than 25 ms"):
            module.setup("fit")
        return
    module.setup("fit")
    assert module.train_dataset.skipped == {"shorter than 25 ms": 1}
    batches = list(module.train_dataloader())
    assert sorted(i for batch in batches for i in batch["ids"]) == ["long"] + [f"u{n:02d}" for n in range(12)]
