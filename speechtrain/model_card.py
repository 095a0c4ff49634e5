"""The README.md of an exported folder: what the model is, how to load it, which recipe trained it and how far.

Both exports write it: `train()` at the end of a run and `speechtrain-export` from any checkpoint. The
recipe name comes from the run's resolved config (`recipe_name`), the figures from its final metrics.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from omegaconf import OmegaConf

from speechtrain.models.registry import ModelCard, families

# A folder of a model type that is not registered still gets a card.
UNKNOWN_CARD = ModelCard(pipeline_tag="", library="speechtrain", load="speechtrain.hub.load_bundle")


def card_of(model_type: str) -> ModelCard:
    """The model-card facts of `model_type`, which its family's registry entry holds."""
    family = families().get(model_type)
    return UNKNOWN_CARD if family is None else family.card


def write_model_card(
    folder: str | Path, source: str, config_yaml: str | None = None, metrics: Mapping[str, float] | None = None
) -> Path:
    """Writes `folder/README.md` for the model in `folder/config.json`; `source` says where the weights came from
    (a checkpoint, a run folder), `config_yaml` is the run's resolved config, `metrics` its final metrics."""
    folder = Path(folder)
    model_type = json.loads((folder / "config.json").read_text()).get("model_type", "model")
    card = card_of(model_type)
    pipeline_tag, library, load = card.pipeline_tag, card.library, card.load
    recipe = OmegaConf.create(config_yaml).get("recipe_name") if config_yaml else None
    lines = ["---", f"library_name: {library}", f"pipeline_tag: {pipeline_tag}" if pipeline_tag else None,
             "tags: [speechtrain]", "---", f"# {model_type} trained with speechtrain", "",
             f"Weights from {source}.", f"Recipe: `{recipe}` (`python train.py recipe={recipe}`)." if recipe else None,
             "", f"Load with `{load}`."]
    if metrics:
        lines += ["", "## Final metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {value:.4f} |" for key, value in sorted(metrics.items())]
    if config_yaml:
        lines += ["", "## Training config (resolved)", "", "```yaml", config_yaml.rstrip(), "```"]
    path = folder / "README.md"
    path.write_text("\n".join(line for line in lines if line is not None) + "\n")
    return path
