"""Resuming: a run SIGKILLed at any moment (between steps, halfway through a checkpoint write, during validation,
at an epoch boundary) and restarted with `ckpt_path=last` ends with the weights of a run that was never
interrupted (deterministic mode, same seed), for the ASR task, the VITS GAN and SoundStorm; their checkpoints load
with `weights_only` (speechtrain/safe_load.py) and export."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from speechtrain.cli.export import export_checkpoint
from speechtrain.data.datamodule import ResumableDataLoader
from speechtrain.data.samplers import DynamicBucketSampler
from speechtrain.safe_load import load_checkpoint
from speechtrain.train import train

REPO_DIR = Path(__file__).resolve().parents[1]  # the checkout: train.py and recipes/

TESTS_DIR = Path(__file__).resolve().parent
# Validation on (one batch an epoch), so that kills can land in it; a checkpoint at every step.
COMMON = ["trainer.deterministic=true", "+trainer.limit_val_batches=1", "trainer.check_val_every_n_epoch=1",
          "logger=none", "~callbacks.learning_rate_monitor", "export=false", "callbacks.model_checkpoint.monitor=null",
          "+callbacks.model_checkpoint.every_n_train_steps=1"]
RECIPES = {
    # 4 batches an epoch from the token data module (the same resumable loader): killed mid-epoch 1
    "soundstorm_mini": (["trainer.max_steps=7", "task.warmup_steps=2", "task.sample_every_n_epochs=1"], 5),
    # 4 batches an epoch (13 windows of 3 s fit the 40 s budget): 5 steps cross an epoch boundary, the kill lands
    # mid-epoch
    "whisper_mini": (["trainer.max_steps=5", "task.warmup_steps=2"], 2),
    # 2 batches an epoch and 2 optimiser steps a batch (global_step counts both): 3 batches, killed before the
    # first of epoch 1, so the last checkpoint is epoch 0's last batch (Lightning then skips on_train_epoch_start)
    "vits_mini": (["trainer.max_steps=6", "data.max_batch_seconds=6", "data.max_duration=5",
                   "data.max_batch_size=2", "+trainer.limit_train_batches=2"], 4),
}
# Where a real kill can land. `step` (from RECIPES) applies to the first two; the others kill in epoch 0's
# validation and at the start of epoch 1, when the newest checkpoint is epoch 0's last batch.
MOMENTS = ["between_steps", "checkpoint_write", "validation", "epoch_boundary"]


class KillWhenPickled:
    """Pickling this SIGKILLs the process: put in a checkpoint, it kills `torch.save` halfway through the write."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)


class KillAt(L.Callback):
    """SIGKILLs its own process at `moment` (one of MOMENTS) once `global_step >= step`: no exception handling, no
    teardown, as a real kill (OOM killer, preemption without warning, power loss)."""

    def __init__(self, moment: str, step: int) -> None:
        self.moment, self.step = moment, step

    def _kill_at(self, moment: str, trainer: L.Trainer) -> None:
        if moment == self.moment and trainer.global_step >= self.step and not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._kill_at("between_steps", trainer)  # right after the previous step's checkpoint was written

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._kill_at("validation", trainer)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch > 0:
            self._kill_at("epoch_boundary", trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.moment == "checkpoint_write" and trainer.global_step >= self.step:
            checkpoint["kill_while_writing"] = KillWhenPickled()


@pytest.fixture(scope="module")
def uninterrupted_runs(tmp_path_factory) -> dict[str, dict[str, torch.Tensor]]:
    """The final weights of each recipe's uninterrupted run, trained once per module and shared by the moments."""
    return {}


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]


class RandomItems(torch.utils.data.Dataset):
    """Items drawn from torch's global generator, as VITS's random segments and noise are."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.rand(())


def random_items_loader() -> ResumableDataLoader:
    return ResumableDataLoader(RandomItems(), batch_sampler=DynamicBucketSampler([1.0] * 12, 3.0, num_buckets=1))


@pytest.mark.parametrize("batches_before_kill", [2, 4])  # mid-epoch 0, end of epoch 0
def test_loader_resumes_the_batches_and_random_draws_of_an_uninterrupted_run(batches_before_kill):
    torch.manual_seed(0)
    uninterrupted, whole, state = random_items_loader(), [], None
    for epoch in range(2):
        uninterrupted.batch_sampler.set_epoch(epoch)
        for batch in uninterrupted:
            whole.append(batch)
            if len(whole) == batches_before_kill:
                state = uninterrupted.state_dict()
    torch.manual_seed(1)  # a new process: its generators hold something else until the restore
    loader, resumed = random_items_loader(), []
    loader.load_state_dict(state)
    for epoch in range(batches_before_kill // 4, 2):
        loader.batch_sampler.set_epoch(epoch)
        resumed.extend(loader)
    assert len(resumed) == len(whole) - batches_before_kill
    assert all(torch.equal(a, b) for a, b in zip(whole[batches_before_kill:], resumed, strict=True))


def test_loader_saved_by_two_ranks_restarts_the_epoch_in_one_with_rank_0s_random_states(caplog):
    from speechtrain.data import datamodule

    torch.manual_seed(0)
    saver = random_items_loader()
    saver.batch_sampler.set_epoch(1)
    for _ in zip(range(2), saver, strict=False):  # 2 of the epoch's 4 batches done
        pass
    state = saver.state_dict()
    rank_0_states = state["random_states"][0]
    torch.manual_seed(5)
    state["random_states"] = [rank_0_states, datamodule._random_states()]  # as two ranks save it

    torch.manual_seed(1)  # a new process
    loader = random_items_loader()
    loader.load_state_dict(state)
    loader.batch_sampler.set_epoch(1)  # Lightning's, for the epoch the checkpoint is in
    resumed = list(loader)
    assert "saved by 2 ranks, this run has 1: epoch 1's data order starts again from its first batch" in caplog.text

    datamodule._set_random_states(rank_0_states)
    expected_loader = random_items_loader()
    expected_loader.batch_sampler.set_epoch(1)
    expected = list(expected_loader)
    assert len(resumed) == len(expected) == 4  # the whole epoch, not a skip count meant for other shards
    assert all(torch.equal(a, b) for a, b in zip(expected, resumed, strict=True))


def test_only_the_current_cuda_device_s_generator_is_restored(monkeypatch):
    from speechtrain.data import datamodule

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", restored.append)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.append(("all", states)))
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: torch.tensor([7], dtype=torch.uint8))
    states = datamodule._random_states()
    assert torch.equal(states["cuda_device"], torch.tensor([7], dtype=torch.uint8))
    datamodule._set_random_states(states)
    # an older checkpoint with every device's state (8 GPUs visible): this rank's device, 1, not all 8
    older = {**states, "cuda": [torch.tensor([i], dtype=torch.uint8) for i in range(8)]}
    del older["cuda_device"]
    datamodule._set_random_states(older)
    assert [t.tolist() for t in restored] == [[7], [1]]


# Every family is killed between steps; the other moments (a half-written checkpoint, mid-validation, the epoch
# boundary) are the loop's, not the family's: Whisper's in the default run, the rest of the matrix under `-m slow`.
CASES = [pytest.param(recipe, moment, marks=() if moment == "between_steps" or recipe == "whisper_mini"
                      else pytest.mark.slow)
         for recipe in ("whisper_mini", "vits_mini", "soundstorm_mini") for moment in MOMENTS]


@pytest.mark.parametrize(("recipe", "moment"), CASES)
def test_killed_run_resumes_to_the_uninterrupted_weights(recipe, moment, compose, tmp_path, uninterrupted_runs):
    overrides, kill_step = RECIPES[recipe]
    # the killed run is a fresh process: it must compute on as many threads as this one (an xdist worker has one)
    overrides = [f"recipe={recipe}", *COMMON, *overrides, f"cpu_threads={torch.get_num_threads()}"]
    # A thread-count change earlier in the process (a notebook cell, another test) must not change what train()
    # computes: the killed run below starts in a fresh process, the other two run in this one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_num_threads(threads)
    if recipe not in uninterrupted_runs:
        train(compose(*overrides, output_dir=tmp_path / "whole"))
        uninterrupted_runs[recipe] = final_weights(tmp_path / "whole")

    killed = tmp_path / "killed"
    command = [sys.executable, str(REPO_DIR / "train.py"), *overrides, f"hydra.run.dir={killed}",
               "trainer.accelerator=cpu", "+trainer.enable_progress_bar=false", "~callbacks.progress_bar",
               "+callbacks.kill._target_=test_resume.KillAt", f"+callbacks.kill.moment={moment}",
               f"+callbacks.kill.step={kill_step if moment in ('between_steps', 'checkpoint_write') else 1}"]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    interrupted = load_checkpoint(killed / "checkpoints" / "last.ckpt")  # with weights_only: no unsafe types inside
    if moment == "between_steps":
        assert interrupted["global_step"] == kill_step
        loader_state = interrupted["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
        assert 0 < loader_state["batches_done"]  # the loader's state is mid-epoch (VITS: limit_train_batches cut it)
    elif moment == "checkpoint_write":
        assert interrupted["global_step"] < kill_step  # the half-written checkpoint never replaced last.ckpt
        assert list((killed / "checkpoints").glob(".last.ckpt.*.tmp")) or list((killed / "checkpoints").glob(".*.tmp"))
    else:
        assert interrupted["epoch"] == 0 and interrupted["global_step"] > 0

    train(compose(*overrides, "ckpt_path=last", output_dir=killed))
    whole, resumed = uninterrupted_runs[recipe], final_weights(killed)
    assert whole.keys() == resumed.keys()
    different = [k for k in whole if not torch.equal(whole[k], resumed[k])]
    assert not different, different[:5]
    before = interrupted["state_dict"]
    assert any(not torch.equal(before[k], resumed[k]) for k in before)  # the resumed run did train on
    if moment == "between_steps":  # speechtrain-export reads the resumed run's checkpoint with the same safe loader
        exported = export_checkpoint(killed / "checkpoints" / "last.ckpt", tmp_path / "exported")
        assert (exported / "config.json").is_file()


def test_vits_skips_non_finite_generator_losses_then_stops_with_a_clear_message(compose, tmp_path, caplog):
    """The ASR task's guard is tested in tests/tasks/test_asr_task.py; here the GAN's, end to end."""
    from speechtrain.tasks.guards import NonFiniteLossError

    overrides = ["recipe=vits_mini", "data.max_batch_seconds=6", "data.max_duration=5", "data.max_batch_size=2",
                 "+trainer.limit_val_batches=0", "logger=none", "~callbacks.learning_rate_monitor", "export=false",
                 "task.mel_weight=nan", "task.max_consecutive_nonfinite=2"]
    with pytest.raises(NonFiniteLossError, match="2 consecutive steps had a non-finite loss"):
        train(compose(*overrides, output_dir=tmp_path))
    assert "skipping step" in caplog.text and "loss is nan" in caplog.text
