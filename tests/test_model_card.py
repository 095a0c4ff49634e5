"""The exported folder's README.md: loader, pipeline tag, recipe and metrics for every model family."""

import json

import pytest
import yaml

from speechtrain.model_card import UNKNOWN_CARD, write_model_card
from speechtrain.models.registry import families, get_family


def test_every_registered_family_has_a_card():
    assert all(family.card.load and family.card.pipeline_tag for family in families().values())


@pytest.mark.parametrize("model_type", sorted(families()))
def test_card_records_loader_recipe_and_metrics(model_type, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    config_yaml = "recipe_name: some_recipe\nseed: 7\ntask:\n  lr: 0.001\n"
    card = write_model_card(tmp_path, "`run/last.ckpt`", config_yaml, {"val/loss": 1.25, "val/wer": 0.5}).read_text()
    header = yaml.safe_load(card.split("---")[1])
    card_facts = get_family(model_type).card
    pipeline_tag, library, load = card_facts.pipeline_tag, card_facts.library, card_facts.load
    assert header["library_name"] == library and header["pipeline_tag"] == pipeline_tag
    assert f"Load with `{load}`" in card
    assert "Recipe: `some_recipe` (`python train.py recipe=some_recipe`)" in card
    assert "| val/loss | 1.2500 |" in card and "| val/wer | 0.5000 |" in card
    assert config_yaml.rstrip() in card and "`run/last.ckpt`" in card


def test_card_without_run_files_says_only_what_is_known(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vits"}))
    card = write_model_card(tmp_path, "a checkpoint").read_text()
    assert "Recipe:" not in card and "Final metrics" not in card and "Training config" not in card


def test_unregistered_model_type_gets_the_generic_loader(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "someone_elses"}))
    card = write_model_card(tmp_path, "a checkpoint").read_text()
    assert f"Load with `{UNKNOWN_CARD.load}`" in card and "pipeline_tag" not in card
