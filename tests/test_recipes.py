"""Every recipe composes; the ones on bundled data also build their task and data module."""

import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from speechtrain.data.samplers import DynamicBucketSampler
from speechtrain.errors import ConfigError
from speechtrain.train import CONFIG_DIR, build, train

RECIPES = sorted(path.stem for path in (CONFIG_DIR / "recipe").glob("*.yaml"))
BUNDLED = [name for name in RECIPES if "mini" in name]  # the recipes that run on data shipped in the repo


def test_there_is_a_bundled_recipe_for_every_family():
    assert {"whisper_mini", "s2t_mini", "vits_mini", "soundstorm_mini", "bark_mini"} <= set(BUNDLED)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_composes_and_names_itself(recipe, compose, tmp_path):
    cfg = compose(f"recipe={recipe}", output_dir=tmp_path)
    assert cfg.recipe_name == recipe
    assert cfg.optimized_metric.startswith("val/")
    assert cfg.task._target_.startswith("speechtrain.tasks.")


@pytest.mark.parametrize("recipe", BUNDLED)
def test_bundled_recipe_builds_its_task_and_data(recipe, compose, tmp_path):
    task, datamodule = build(compose(f"recipe={recipe}", output_dir=tmp_path))
    assert sum(p.numel() for p in task.model.parameters()) > 0
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch is not None and len(batch["ids"]) > 0


@pytest.mark.parametrize("recipe", ["whisper_mini", "s2t_mini", "vits_mini", "soundstorm_mini", "bark_mini"])
def test_bundled_recipe_trains_under_bf16_autocast(recipe, compose, tmp_path):
    """The bf16-mixed path of trainer=gpu, on the CPU: every loss stays finite (VITS keeps spectrograms in fp32)."""
    metrics = train(compose(f"recipe={recipe}", "trainer.precision=bf16-mixed", "trainer.max_steps=2", "logger=none",
                            "export=false", output_dir=tmp_path))
    losses = {key: value for key, value in metrics.items() if key.startswith("train/loss")}
    assert losses and all(math.isfinite(value) for value in losses.values()), metrics


def test_recipe_without_its_pretrained_model_names_model_pretrained(compose, tmp_path):
    """Not OmegaConf's 'Missing value at index 0': the key, what to put there and where to get one."""
    needs_pretrained = set()
    for recipe in RECIPES:
        cfg = compose(f"recipe={recipe}", output_dir=tmp_path)
        if not OmegaConf.is_missing(cfg.model, "pretrained"):
            continue
        needs_pretrained.add(recipe)
        with pytest.raises(ConfigError, match=r"model.pretrained is not set: .* Add model.pretrained=PATH") as error:
            build(cfg)
        assert "Hugging Face-format model folder" in str(error.value), recipe
        # where to get one: a download command, or for Bark which part of suno/bark to save
        assert ("huggingface-cli download" in str(error.value)) != recipe.startswith("bark"), recipe
    assert needs_pretrained == {"whisper_finetune", "whisper_librispeech", "s2t_finetune", "vits_finetune",
                                "vits_finetune_piper", "bark_semantic", "bark_coarse", "bark_fine"}


def test_vits_ljspeech_caps_items_per_batch_at_the_original_batch_size(compose, tmp_path):
    """The decoder and discriminators cost per item: short LJSpeech buckets must not hold more than the original's 64
    (jaywalnut310/vits configs/ljs_base.json batch_size, per GPU), whatever the seconds budget allows."""
    cfg = compose("recipe=vits_ljspeech", output_dir=tmp_path)
    assert cfg.data.max_batch_size == 64
    durations = np.random.default_rng(0).uniform(1.0, 10.0, 3000)  # LJSpeech clips last 1-10 s
    sampler = DynamicBucketSampler(durations, cfg.data.max_batch_seconds, num_buckets=cfg.data.num_buckets,
                                   max_batch_size=cfg.data.max_batch_size)
    sizes = [len(batch) for batch in sampler]
    assert max(sizes) == 64 and sum(sizes) == 3000
    assert cfg.data.max_batch_seconds / durations.min() > 2 * 64  # the budget alone would allow far more
