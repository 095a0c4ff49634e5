"""The config layout: a root that picks no family, recipe names taken from the choice, optimizers and SpecAugment
policies defined once in their groups, the fine Bark recipes one line over the coarse ones."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from omegaconf import OmegaConf

from speechtrain.train import CONFIG_DIR, compose_root

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(path.stem for path in (CONFIG_DIR / "recipe").glob("*.yaml"))
FAMILY_GROUPS = ("model", "tokenizer", "features", "data", "task")


def _config_files_outside(group: str) -> list[Path]:
    return [path for path in CONFIG_DIR.rglob("*.yaml") if path.parent.name != group]


def test_the_root_picks_no_family_until_a_recipe_does():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose_root(["~recipe"])
    assert not set(FAMILY_GROUPS) & set(cfg), sorted(cfg)
    assert cfg.recipe_name is None


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_recipe_neither_undoes_the_root_nor_retypes_its_name(recipe):
    text = (CONFIG_DIR / "recipe" / f"{recipe}.yaml").read_text()
    assert not re.search(r"override /\w+: null", text), f"{recipe}: the root already picks nothing"
    assert "recipe_name:" not in text, f"{recipe}: recipe_name comes from the recipe choice"


def test_recipe_name_is_the_choice_under_hydra_main_as_in_the_compose_api():
    shown = subprocess.run([sys.executable, "train.py", "recipe=bark_mini_fine", "--cfg", "job", "-p", "recipe_name",
                            "--resolve"], cwd=REPO, capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "bark_mini_fine"


def test_a_recipe_or_an_override_that_sets_recipe_name_keeps_it(tmp_path):
    (tmp_path / "recipe").mkdir()
    (tmp_path / "recipe" / "my_whisper.yaml").write_text("# @package _global_\ndefaults:\n  - whisper_mini\n"
                                                        "recipe_name: whisper_for_me\n")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        mine = compose_root(["recipe=my_whisper", f"hydra.searchpath=[file://{tmp_path}]"])
        renamed = compose_root(["recipe=whisper_mini", "recipe_name=tiny_whisper"])
    assert (mine.recipe_name, renamed.recipe_name) == ("whisper_for_me", "tiny_whisper")


@pytest.mark.parametrize(("group", "block"), [("optimizer", "_target_: torch.optim."),
                                              ("specaugment", "_target_: speechtrain.layers.specaugment.")])
def test_optimizers_and_specaugment_policies_are_written_once_in_their_group(group, block):
    copies = [str(path.relative_to(CONFIG_DIR)) for path in _config_files_outside(group) if block in path.read_text()]
    assert not copies, f"pick conf/{group}/ instead of writing the block: {copies}"


def test_every_task_optimizer_comes_from_the_optimizer_group(compose, tmp_path):
    for recipe in ("whisper_mini", "vits_mini", "soundstorm_mini", "bark_mini"):
        task = compose(f"recipe={recipe}", output_dir=tmp_path).task
        optimizers = [key for key in task if key.endswith("optimizer")]
        assert optimizers, recipe
        for key in optimizers:
            assert task[key]._target_ == "torch.optim.AdamW" and task[key]._partial_, (recipe, key)


def test_a_specaugment_policy_replaces_the_tasks_whole_node_from_the_command_line(compose, tmp_path):
    cfg = compose("recipe=whisper_mini", "specaugment@task.spec_augment=librispeech_double", output_dir=tmp_path)
    assert OmegaConf.to_container(cfg.task.spec_augment) == {
        "_target_": "speechtrain.layers.specaugment.FilterbankSpecAugment.from_policy", "policy": "ld"}


@pytest.mark.parametrize(("coarse", "fine", "fine_model"), [("bark_coarse", "bark_fine", "bark_fine"),
                                                           ("bark_mini_coarse", "bark_mini_fine", "bark_fine_tiny")])
def test_a_fine_bark_recipe_is_its_coarse_recipe_with_the_fine_model(coarse, fine, fine_model, compose, tmp_path):
    fine_cfg = OmegaConf.to_container(compose(f"recipe={fine}", output_dir=tmp_path))
    swapped = OmegaConf.to_container(compose(f"recipe={coarse}", f"model={fine_model}", output_dir=tmp_path))
    assert fine_cfg.pop("recipe_name") == fine and swapped.pop("recipe_name") == coarse
    assert fine_cfg == swapped
