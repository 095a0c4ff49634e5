"""The training entry point: `train(cfg)` builds every object from the Hydra config and runs Lightning.

`python train.py recipe=NAME key=value ...` goes through `main`, which turns the usual configuration
mistakes (unknown key, missing data folder, bad value) into one paragraph instead of a stack trace and
returns the metric a sweep optimises.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.errors import InstantiationException
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from speechtrain.distributed import build_strategy
from speechtrain.errors import ConfigError
from speechtrain.hub import save_bundle
from speechtrain.model_card import write_model_card

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE_DIR / "conf"  # package data: found the same way from a checkout and from a wheel
BUNDLED_DATA_DIR = PACKAGE_DIR / "assets"  # the mini corpus, its codec tokens and the mini Bark vocabulary


def _model_config_value(folder: str, key: str) -> Any:
    config_path = Path(folder) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"model.pretrained={folder}: no config.json there (expected a Hugging Face-format folder)"
        )
    config = json.loads(config_path.read_text())
    if key not in config:
        raise KeyError(f"{config_path} has no {key!r}")
    return config[key]


def _token_info(folder: str, key: str) -> Any:
    """A value of a tokens folder's tokens.json by dotted key (`codec.codebook_size`), so that model and data
    configs follow the tokenization instead of repeating it."""
    from speechtrain.data.token_shards import read_token_info

    value: Any = read_token_info(folder)
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(f"{folder}/tokens.json has no {key!r}")
        value = value[part]
    return value


def _eval_int(expression: str) -> int:
    if not re.fullmatch(r"[\d\s+\-*/()]+", str(expression)):
        raise ValueError(f"eval_int accepts integer arithmetic only, got {expression!r}")
    return int(eval(str(expression), {"__builtins__": {}}))  # noqa: S307 - digits and operators only


def register_resolvers() -> None:
    """Resolvers the configs use; registered once, also when tests compose configs without main()."""
    resolvers = {
        "speechtrain_package": lambda: str(PACKAGE_DIR),
        "working_dir": os.getcwd,
        "model_config_value": _model_config_value,
        "token_info": _token_info,
        # Integer arithmetic on config values, e.g. ${eval_int:${audio.n_fft} // 2 + 1}; digits and + - * // ( ) only.
        "eval_int": _eval_int,
    }
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


register_resolvers()


def _resolve_ckpt_path(cfg: DictConfig, output_dir: Path) -> str | None:
    if cfg.ckpt_path != "last":
        return cfg.ckpt_path
    last = output_dir / "checkpoints" / "last.ckpt"  # a folder of shards under trainer=fsdp
    return str(last) if last.exists() else None


# Where to get a model folder for model.pretrained, by the builder that reads it (model._target_'s last part).
PRETRAINED_EXAMPLES = {
    "build_whisper": "openai/whisper-tiny, downloaded with "
                     "`huggingface-cli download openai/whisper-tiny --local-dir models/whisper-tiny`",
    "build_speech2text": "facebook/s2t-small-librispeech-asr, downloaded with `huggingface-cli download "
                         "facebook/s2t-small-librispeech-asr --local-dir models/s2t-small-librispeech-asr`",
    "build_vits": "facebook/mms-tts-eng, downloaded with "
                  "`huggingface-cli download facebook/mms-tts-eng --local-dir models/mms-tts-eng`",
    "build_bark": "one part of suno/bark saved by transformers, e.g. `BarkModel.from_pretrained('suno/bark')"
                  ".semantic.save_pretrained('models/bark/semantic')` (.coarse_acoustics, .fine_acoustics likewise)",
}


def _missing_keys(node: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose value is Hydra's `???` (a value the user must give), found without resolving."""
    if isinstance(node, dict):
        return [key for name, value in node.items() for key in _missing_keys(value, f"{prefix}{name}.")]
    if isinstance(node, list):
        return [key for index, value in enumerate(node) for key in _missing_keys(value, f"{prefix}{index}.")]
    return [prefix.removesuffix(".")] if node == "???" else []


def check_required_values(cfg: DictConfig) -> None:
    """Raises a `ConfigError` naming the first value the recipe leaves to the user (`???`) and what to put there;
    without it the first interpolation that reads the value fails with OmegaConf's 'Missing value at index 0'."""
    missing = _missing_keys(OmegaConf.to_container(cfg, resolve=False))
    if not missing:
        return
    recipe = cfg.get("recipe_name") or "this recipe"
    if "model.pretrained" in missing:
        builder = str(cfg.model.get("_target_", "")).rpartition(".")[2]
        example = PRETRAINED_EXAMPLES.get(builder, "a model of this family")
        raise ConfigError(
            f"model.pretrained is not set: {recipe} starts from a pretrained model. Add model.pretrained=PATH, "
            f"PATH a Hugging Face-format model folder (config.json and the weights, with its tokenizer files), "
            f"e.g. {example}; a folder exported by speechtrain works too"
        )
    raise ConfigError(f"{missing[0]} is not set: {recipe} needs a value there; add {missing[0]}=VALUE to the command "
                      "line (see the recipe's comments)")


def build(cfg: DictConfig) -> tuple[L.LightningModule, L.LightningDataModule]:
    """The task (with its model, tokenizer and feature extractor) and the data module of a config."""
    check_required_values(cfg)
    tokenizer = hydra.utils.instantiate(cfg.tokenizer) if cfg.get("tokenizer") else None
    # ASR recipes have a feature extractor; TTS recipes compute spectrograms in their data module and task.
    feature_extractor = hydra.utils.instantiate(cfg.features) if cfg.get("features") else None
    model = hydra.utils.instantiate(cfg.model, tokenizer=tokenizer)
    # Token-only recipes (SoundStorm, Bark's coarse and fine models) have neither tokenizer nor features.
    data_inputs = {"tokenizer": tokenizer} if tokenizer is not None else {}
    if feature_extractor is not None:
        data_inputs["feature_extractor"] = feature_extractor
    datamodule = hydra.utils.instantiate(cfg.data, **data_inputs)
    task = hydra.utils.instantiate(cfg.task, model=model, tokenizer=tokenizer, feature_extractor=feature_extractor)
    return task, datamodule


def train(cfg: DictConfig) -> dict[str, float]:
    """Train (and export) as `cfg` says; returns the final logged metrics as floats."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)

    task, datamodule = build(cfg)
    model = task.model
    loggers = [hydra.utils.instantiate(c) for c in cfg.get("logger", {}).values()]
    callbacks = [hydra.utils.instantiate(c) for c in cfg.get("callbacks", {}).values()]
    if not loggers:  # logger=none: Lightning's learning-rate monitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    strategy = cfg.trainer.get("strategy", "auto")
    strategy = build_strategy(hydra.utils.instantiate(strategy) if OmegaConf.is_dict(strategy) else strategy, task)
    # The data module's bucketing sampler shards across ranks itself.
    trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, strategy=strategy,
                                      use_distributed_sampler=False)

    checkpoint_dir = output_dir / "checkpoints"
    checkpoint_dir.mkdir(exist_ok=True)
    (checkpoint_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    log.info("model: %s, %.2f M parameters", type(model).__name__, sum(p.numel() for p in model.parameters()) / 1e6)

    trainer.fit(task, datamodule=datamodule, ckpt_path=_resolve_ckpt_path(cfg, output_dir))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}

    if cfg.export and trainer.is_global_zero:
        export_dir = output_dir / "exported"
        save_bundle(export_dir, model, task.tokenizer, task.feature_extractor)
        write_model_card(export_dir, f"the end of the run in `{output_dir}` (step {trainer.global_step})",
                         (checkpoint_dir / "config.yaml").read_text(), metrics)
        log.info("exported a Hugging Face-format model to %s", export_dir)
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()  # the next job of a multirun must start its own W&B run
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    log.info("metrics: %s", metrics)
    return metrics


_USER_ERRORS = (FileNotFoundError, NotADirectoryError, ValueError, KeyError, TypeError, OmegaConfBaseException)


def _user_error(exc: BaseException) -> BaseException | None:
    """The configuration or data mistake behind `exc`, if that is what it is (Hydra wraps them)."""
    while isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc if isinstance(exc, _USER_ERRORS + (InstantiationException,)) else None


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except Exception as exc:
        cause = _user_error(exc)
        if cause is None or os.environ.get("SPEECHTRAIN_DEBUG"):
            raise
        message = str(cause).strip().strip('"')
        print(
            f"speechtrain: error: {message} ({type(cause).__name__}). Check the recipe and the overrides on the "
            "command line; set SPEECHTRAIN_DEBUG=1 for the full traceback.",
            file=sys.stderr,
        )
        sys.exit(1)
    return metrics.get(cfg.optimized_metric)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
