"""Atomic checkpoint writes: a save that dies midway leaves the previous checkpoint whole and loadable."""

import pytest
import torch

import speechtrain.checkpoint_io as checkpoint_io
from speechtrain.checkpoint_io import AtomicCheckpointIO, atomic_torch_save


def test_crash_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "weight": torch.ones(3)}, path)

    def dies_halfway(obj, file):
        file.write(b"PK\x03\x04 half a zip archive")  # what a killed torch.save leaves
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_io.torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "weight": torch.zeros(3)}, path)
    monkeypatch.undo()

    loaded = io.load_checkpoint(path)
    assert loaded["step"] == 1 and torch.equal(loaded["weight"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_save_replaces_and_creates_folders(tmp_path):
    path = tmp_path / "new" / "epoch0.ckpt"
    atomic_torch_save({"step": 1}, path)
    atomic_torch_save({"step": 2}, path)
    assert torch.load(path)["step"] == 2 and len(list(path.parent.iterdir())) == 1


def test_trainer_checkpoints_go_through_the_atomic_writer(compose, tmp_path, monkeypatch):
    from speechtrain.train import train

    written = []
    monkeypatch.setattr(checkpoint_io, "atomic_torch_save",
                        lambda obj, path, save=atomic_torch_save: (written.append(str(path)), save(obj, path)))
    train(compose("recipe=whisper_mini", "trainer.max_steps=1", "+trainer.limit_val_batches=0", "logger=none",
                  "~callbacks.learning_rate_monitor", "export=false", output_dir=tmp_path))
    assert str(tmp_path / "checkpoints" / "last.ckpt") in written
