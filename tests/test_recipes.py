"""Every recipe composes; the ones on bundled data also build their task and data module."""

import math

import pytest

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
