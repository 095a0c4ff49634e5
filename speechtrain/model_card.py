"""The README.md of an exported folder: what the model is, how to load it, which recipe trained it and how far.

Both exports write it: `train()` at the end of a run and `speechtrain-export` from any checkpoint. The
recipe name comes from the run's resolved config (`recipe_name`), the figures from its final metrics.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from omegaconf import OmegaConf

from speechtrain.models.registry import ModelCard as FamilyCard
from speechtrain.models.registry import families

# A folder of a model type that is not registered still gets a card.
UNKNOWN_CARD = FamilyCard(pipeline_tag="", library="speechtrain", load="speechtrain.hub.load_bundle")
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def card_of(model_type: str) -> FamilyCard:
    """The model-card facts of `model_type`, which its family's registry entry holds."""
    family = families().get(model_type)
    return UNKNOWN_CARD if family is None else family.card


def _corpus_name(spec: Mapping[str, Any] | None) -> str | None:
    """A corpus's name for the card: a Hub dataset id as given, else its folder's name."""
    if not spec or not spec.get("path"):
        return None
    path = str(spec["path"])
    return path if _is_hub_id(path) else Path(path).name


def _is_hub_id(value: Any) -> bool:
    """`org/name` that is not a local path: what `base_model` and `datasets` may name on the Hub."""
    return isinstance(value, str) and bool(HUB_ID.fullmatch(value)) and not Path(value).exists()


def card_data(model_type: str, config: Mapping[str, Any], metrics: Mapping[str, float]) -> ModelCardData:
    """The card's metadata from a run's resolved config: library, task, base model, training corpus, language,
    license, and a `model-index` entry per `test/` metric (WER, CER) on the `data.test` corpus."""
    card = card_of(model_type)
    data = config.get("data") or {}
    test = data.get("test")
    pretrained = (config.get("model") or {}).get("pretrained")
    eval_results = [
        EvalResult(task_type=card.pipeline_tag or "other", dataset_type=str(test.get("format")),
                   dataset_name=_corpus_name(test), metric_type=key.split("/", 1)[1], metric_value=value)
        for key, value in sorted(metrics.items()) if test and key.startswith("test/") and not key.endswith("loss")
    ]
    train_name = _corpus_name(data.get("train"))
    return ModelCardData(
        library_name=card.library, pipeline_tag=card.pipeline_tag or None, tags=["speechtrain"],
        base_model=pretrained if _is_hub_id(pretrained) else None, datasets=[train_name] if train_name else None,
        language=(config.get("tokenizer") or {}).get("language"), license=config.get("license"),
        model_name=config.get("recipe_name") or model_type, eval_results=eval_results or None,
    )


def write_model_card(
    folder: str | Path, source: str, config_yaml: str | None = None, metrics: Mapping[str, float] | None = None
) -> Path:
    """Writes `folder/README.md` for the model in `folder/config.json`; `source` says where the weights came from
    (a checkpoint, a run folder), `config_yaml` is the run's resolved config, `metrics` its final metrics (test
    metrics become the card's `model-index`, which the Hub shows as evaluation results)."""
    folder = Path(folder)
    model_type = json.loads((folder / "config.json").read_text()).get("model_type", "model")
    config = OmegaConf.to_container(OmegaConf.create(config_yaml)) if config_yaml else {}
    metrics = dict(metrics or {})
    recipe = config.get("recipe_name")
    lines = [f"# {model_type} trained with speechtrain", "", f"Weights from {source}.",
             f"Recipe: `{recipe}` (`python train.py recipe={recipe}`)." if recipe else None,
             "", f"Load with `{card_of(model_type).load}`."]
    if metrics:
        lines += ["", "## Final metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {value:.4f} |" for key, value in sorted(metrics.items())]
    if config_yaml:
        lines += ["", "## Training config (resolved)", "", "```yaml", config_yaml.rstrip(), "```"]
    body = "\n".join(line for line in lines if line is not None) + "\n"
    card = ModelCard(f"---\n{card_data(model_type, config, metrics).to_yaml()}\n---\n{body}")
    path = folder / "README.md"
    card.save(path)
    return path
