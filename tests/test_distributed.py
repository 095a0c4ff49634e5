"""Multi-process training on the CPU (two gloo processes, Lightning's own launcher through `python train.py`):
DDP for the ASR task and the VITS GAN, FSDP2 for the ASR task; plus the sampler's rank shards."""

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from speechtrain.data.samplers import DynamicBucketSampler
from speechtrain.distributed import block_classes
from speechtrain.layers.specaugment import SpecAugment

REPO_DIR = Path(__file__).resolve().parents[1]  # the checkout: train.py and recipes/

TESTS_DIR = Path(__file__).resolve().parent
TINY = ["+trainer.limit_val_batches=0", "logger=none", "~callbacks.learning_rate_monitor", "export=false",
        "+trainer.enable_progress_bar=false", "~callbacks.progress_bar", "+trainer.enable_model_summary=false"]
VITS_TINY = ["data.max_batch_seconds=6", "data.max_duration=5"]


class RecordRank(L.Callback):
    """Saves, per rank, the full weights before and after training, the ids of every batch it trained on, and a
    SpecAugment mask and a dropout mask drawn from the rank's generators when training starts."""

    def __init__(self, folder: str) -> None:
        self.folder, self.ids, self.initial, self.random_masks = Path(folder), [], None, None

    @staticmethod
    def weights(module: L.LightningModule) -> dict[str, torch.Tensor]:
        state = module.state_dict()
        return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in state.items()}

    def on_train_start(self, trainer, module) -> None:
        self.initial = self.weights(module)
        spec_augment = SpecAugment(mask_time_prob=0.3, mask_time_length=3, mask_feature_prob=0.3,
                                   mask_feature_length=2)
        features = torch.ones(4, 16, 60)
        self.random_masks = spec_augment(features) == 0, torch.nn.functional.dropout(features, 0.5) == 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.ids += list(batch["ids"])

    def on_train_end(self, trainer, module) -> None:
        torch.save({"world_size": trainer.world_size, "global_step": trainer.global_step, "ids": self.ids,
                    "initial": self.initial,
                    "final": self.weights(module), "random_masks": self.random_masks,
                    "skipped_batches": getattr(module, "skipped_batches", None),
                    "nonfinite_steps": getattr(getattr(module, "nonfinite", None), "skipped", None)},
                   self.folder / f"rank{trainer.global_rank}.pt")


class PoisonOneStep(L.Callback):
    """Makes rank `rank`'s loss NaN at batch `batch_idx` (the other rank's stays finite) and saves, per rank, the
    weights and the optimiser's step counts just before and just after that batch."""

    def __init__(self, folder: str, rank: int = 1, batch_idx: int = 1) -> None:
        self.folder, self.rank, self.batch_idx, self.before = Path(folder), rank, batch_idx, None

    @staticmethod
    def optimizer_steps(trainer) -> list[float]:
        return [float(state["step"]) for state in trainer.optimizers[0].state.values()]

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx != self.batch_idx:
            return
        self.before = RecordRank.weights(module), self.optimizer_steps(trainer)
        if trainer.global_rank == self.rank:
            finite_loss = module.model_step  # the ASR task's loss
            module.model_step = lambda batch: finite_loss(batch) * float("nan")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if batch_idx != self.batch_idx:
            return
        module.__dict__.pop("model_step", None)
        torch.save({"before": self.before, "after": (RecordRank.weights(module), self.optimizer_steps(trainer))},
                   self.folder / f"poisoned{trainer.global_rank}.pt")


def train_two_processes(tmp_path: Path, *overrides: str, base: tuple[str, ...] | list[str] = TINY,
                        run_dir: Path | None = None) -> list[dict]:
    """`python train.py trainer=ddp_cpu ...` (two processes) in `run_dir` (default tmp_path/run); returns each
    rank's record, written to `tmp_path`."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(REPO_DIR / "train.py"), "trainer=ddp_cpu", *base, *overrides,
               "+callbacks.record._target_=test_distributed.RecordRank", f"+callbacks.record.folder={tmp_path}",
               f"hydra.run.dir={run_dir or tmp_path / 'run'}"]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


def assert_trained_in_sync(records: list[dict]) -> None:
    first, second = records
    assert first["world_size"] == second["world_size"] == 2
    assert first["final"].keys() == second["final"].keys()
    for name in first["final"]:  # identical after every all-reduce
        torch.testing.assert_close(first["final"][name], second["final"][name], atol=0, rtol=0, msg=name)
    assert any(not torch.equal(first["initial"][k], first["final"][k]) for k in first["final"])
    assert first["ids"] and not set(first["ids"]) & set(second["ids"])  # no utterance on both ranks


def test_ddp_trains_the_asr_task_identically_on_two_ranks(tmp_path):
    records = train_two_processes(tmp_path, "recipe=whisper_mini", "trainer.max_steps=1")
    assert_trained_in_sync(records)
    for first, second in zip(records[0]["random_masks"], records[1]["random_masks"], strict=True):
        assert not torch.equal(first, second)  # each rank draws its own SpecAugment and dropout masks


def test_ddp_skips_a_step_on_every_rank_when_one_rank_has_a_non_finite_loss(tmp_path):
    """Rank 1's loss is NaN at its second batch: instead of rank 0 waiting in the all-reduce until the timeout,
    both ranks skip that step (no update, no optimiser state change), count it, and train on in sync."""
    records = train_two_processes(tmp_path, "recipe=whisper_mini", "trainer.max_steps=3", "data.max_batch_seconds=10",
                                  "+callbacks.poison._target_=test_distributed.PoisonOneStep",
                                  f"+callbacks.poison.folder={tmp_path}")
    assert_trained_in_sync(records)
    assert [r["skipped_batches"] for r in records] == [1, 1] and [r["nonfinite_steps"] for r in records] == [1, 1]
    for rank in range(2):
        poisoned = torch.load(tmp_path / f"poisoned{rank}.pt", weights_only=False)
        (weights_before, steps_before), (weights_after, steps_after) = poisoned["before"], poisoned["after"]
        assert steps_before == steps_after and steps_before  # AdamW's state did not move either
        for name, value in weights_before.items():
            assert torch.equal(value, weights_after[name]), name


def test_ddp_trains_the_vits_gan_identically_on_two_ranks(tmp_path):
    """Manual optimisation: discriminator then generator step, both clipped; `ddp` finds unused parameters."""
    records = train_two_processes(tmp_path, "recipe=vits_mini", *VITS_TINY, "trainer.max_steps=2",
                                  "task.gradient_clip_val=1.0")
    assert_trained_in_sync(records)
    assert any(k.startswith("discriminator.") and not torch.equal(records[0]["initial"][k], records[0]["final"][k])
               for k in records[0]["final"])


@pytest.mark.slow
def test_fsdp_on_cpu_matches_ddp(tmp_path):
    """FSDP2 shards every Whisper layer over two gloo processes and ends where DDP ends (same data, same seed)."""
    common = ["recipe=whisper_mini", "trainer.max_steps=2", "trainer.precision=32-true"]
    ddp = train_two_processes(tmp_path / "ddp", *common)
    fsdp = train_two_processes(tmp_path / "fsdp", *common, "trainer=fsdp", "trainer.accelerator=cpu",
                               "trainer.devices=2")
    assert_trained_in_sync(fsdp)
    assert (tmp_path / "fsdp" / "run" / "checkpoints" / "last.ckpt").is_dir()  # one shard file per rank
    for name, expected in ddp[0]["final"].items():
        torch.testing.assert_close(fsdp[0]["final"][name], expected, atol=2e-5, rtol=1e-4, msg=name)
    for ddp_rank, fsdp_rank in zip(ddp, fsdp, strict=True):  # a rerun (same seed) draws each rank's masks again
        assert all(torch.equal(a, b) for a, b in zip(ddp_rank["random_masks"], fsdp_rank["random_masks"], strict=True))
    assert not torch.equal(ddp[0]["random_masks"][0], ddp[1]["random_masks"][0])


@pytest.mark.slow
def test_hybrid_sharding_with_gradient_accumulation_ends_where_ddp_ends(tmp_path):
    """`strategy.shard_size=1` on two ranks: two groups of one, each holding a whole copy and replicating the other
    (HSDP's all-reduce across groups), with two micro-batches a step (no reduce-scatter on the first). Same data
    and seed as DDP with the same accumulation: the same weights."""
    common = ["recipe=whisper_mini", "trainer.max_steps=1", "trainer.precision=32-true",  # one epoch: two
              "trainer.accumulate_grad_batches=2"]  # micro-batches a rank
    ddp = train_two_processes(tmp_path / "ddp", *common)
    hybrid = train_two_processes(tmp_path / "hybrid", *common, "trainer=fsdp", "trainer.accelerator=cpu",
                                 "trainer.devices=2", "trainer.strategy.shard_size=1")
    assert_trained_in_sync(hybrid)
    assert hybrid[0]["ids"] == ddp[0]["ids"] and hybrid[1]["ids"] == ddp[1]["ids"]  # the same micro-batches
    for name, expected in ddp[0]["final"].items():
        torch.testing.assert_close(hybrid[0]["final"][name], expected, atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_shards_are_disjoint_equal_and_cover_the_data(drop_last):
    durations = torch.rand(53, generator=torch.Generator().manual_seed(0)).mul(9).add(1).tolist()
    for replicas in (2, 3):
        shards = [DynamicBucketSampler(durations, 12.0, num_buckets=3, seed=5, drop_last=drop_last,
                                       num_replicas=replicas, rank=rank) for rank in range(replicas)]
        for epoch in (0, 1):
            for shard in shards:
                shard.set_epoch(epoch)
            batches = [list(shard) for shard in shards]
            assert len({len(b) for b in batches}) == 1 and len(batches[0]) == len(shards[0])  # equal step counts
            items = [i for rank_batches in batches for batch in rank_batches for i in batch]
            assert len(items) == len(set(items))  # no item on two ranks
            if not drop_last:
                assert set(items) == set(range(len(durations)))


def test_sampler_resumes_after_the_batches_already_done():
    sampler = DynamicBucketSampler([1.0 + i % 5 for i in range(30)], 10.0, seed=1, num_replicas=2, rank=1)
    sampler.set_epoch(3)
    whole = list(sampler)
    sampler.resume_at(3, 2)
    assert list(sampler) == whole[2:]
    assert list(sampler) == whole  # only the next pass is shortened
    sampler.resume_at(3, 2)
    sampler.set_epoch(4)
    assert len(list(sampler)) == len(sampler)  # a pass over another epoch is whole
    with pytest.raises(ValueError, match="batches_done=99"):
        sampler.resume_at(3, 99)


def test_block_classes_name_the_repeated_layers(compose, tmp_path):
    from speechtrain.train import build

    whisper, _ = build(compose("recipe=whisper_mini", output_dir=tmp_path))
    assert {cls.__name__ for cls in block_classes(whisper)} == {"WhisperEncoderLayer", "WhisperDecoderLayer"}
    vits, _ = build(compose("recipe=vits_mini", output_dir=tmp_path))
    assert {cls.__name__ for cls in block_classes(vits)} == {
        "VitsEncoderLayer", "VitsResidualCouplingLayer", "HifiGanResidualBlock", "PeriodDiscriminator",
        "ScaleDiscriminator"}
    soundstorm, _ = build(compose("recipe=soundstorm_mini", output_dir=tmp_path))
    assert {cls.__name__ for cls in block_classes(soundstorm)} == {"ConformerBlock"}
    with pytest.raises(ValueError, match="block_classes"):
        block_classes(torch.nn.Linear(2, 2))


def test_ddp_looks_for_unused_parameters_when_a_step_may_leave_some(compose, tmp_path):
    """Layerdrop and SoundStorm's self-conditioning leave parameters without a gradient in some steps, which plain
    DDP fails on at the next step; the models declare it and `build_strategy` turns the search on."""
    from lightning.pytorch.strategies import DDPStrategy

    from speechtrain.distributed import build_strategy
    from speechtrain.train import build

    plain, _ = build(compose("recipe=whisper_mini", output_dir=tmp_path))
    assert build_strategy("ddp", plain) == "ddp"
    for layerdrop in ("+model.config.encoder_layerdrop=0.2", "+model.config.decoder_layerdrop=0.2"):
        dropping, _ = build(compose("recipe=whisper_mini", layerdrop, output_dir=tmp_path))
        assert build_strategy("ddp", dropping) == "ddp_find_unused_parameters_true"
    assert build_strategy(DDPStrategy(), dropping)._ddp_kwargs["find_unused_parameters"] is True
    assert build_strategy("auto", dropping) == "auto"
    self_conditioned, _ = build(compose("recipe=soundstorm_mini", output_dir=tmp_path))
    assert self_conditioned.model.config.self_condition
    assert build_strategy("ddp", self_conditioned) == "ddp_find_unused_parameters_true"
    unconditioned, _ = build(compose("recipe=soundstorm_mini", "model.config.self_condition=false",
                                     output_dir=tmp_path))
    assert build_strategy("ddp", unconditioned) == "ddp"


def test_fsdp_refuses_layerdrop_which_each_rank_draws_for_itself(compose, tmp_path):
    from speechtrain.distributed import check_shardable
    from speechtrain.errors import ConfigError
    from speechtrain.train import build

    plain, _ = build(compose("recipe=whisper_mini", output_dir=tmp_path))
    check_shardable(plain)
    dropping, _ = build(compose("recipe=whisper_mini", "+model.config.decoder_layerdrop=0.2", output_dir=tmp_path))
    with pytest.raises(ConfigError, match="WhisperDecoder skip layers at random.*trainer=ddp"):
        check_shardable(dropping)
