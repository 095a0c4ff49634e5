"""The training entry point: `train(cfg)` builds every object from the Hydra config and runs Lightning.

`python train.py recipe=NAME key=value ...` goes through `main`, which turns the usual configuration
mistakes (unknown key, missing data folder, bad value) into one paragraph instead of a stack trace and
returns the metric a sweep optimises.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.model_helpers import is_overridden
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from speechtrain.atomic import atomic_write_bytes
from speechtrain.callbacks import RankSeed
from speechtrain.config_checks import check_required_values, check_targets
from speechtrain.distributed import (
    FullyShardedStrategy,
    build_strategy,
    checkpoint_block_activations,
    compile_blocks,
    full_model,
)
from speechtrain.errors import ConfigError, DependencyError, SpeechtrainError
from speechtrain.hub import resolve_pretrained, save_bundle
from speechtrain.layers.lora import save_peft_adapter
from speechtrain.model_card import write_model_card
from speechtrain.models.registry import family_of_builder
from speechtrain.sweeps import check_trial_launch

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE_DIR / "conf"  # package data: found the same way from a checkout and from a wheel
BUNDLED_DATA_DIR = PACKAGE_DIR / "assets"  # the mini corpus, its codec tokens and the mini Bark vocabulary


def _model_config_value(folder: str, key: str) -> Any:
    config_path = Path(resolve_pretrained(folder)) / "config.json"
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


def _model_type(builder: str) -> str:
    """The model type a model builder (a `model._target_`) builds, from the model registry, so that a data config
    follows the model (`${model_type:${model._target_}}`) instead of repeating it."""
    family = family_of_builder(builder)
    if family is None:
        raise ConfigError(f"model._target_={builder} is not the builder of a registered model type")
    return family.model_type


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
        "model_type": _model_type,
        # Integer arithmetic on config values, e.g. ${eval_int:${audio.n_fft} // 2 + 1}; digits and + - * // ( ) only.
        "eval_int": _eval_int,
    }
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


register_resolvers()


def compose(recipe: str, *overrides: str, output_dir: str | Path | None = None,
            config_dir: str | Path | None = None) -> DictConfig:
    """The config of `recipe` with command-line style `overrides`, as `speechtrain-train recipe=NAME ...` builds it,
    for notebooks and scripts (no Hydra boilerplate). The run goes to `output_dir` (default
    `outputs/RECIPE/<time>` under the working folder); `config_dir` adds a folder of the user's own config groups
    and recipes (`config_dir/recipe/NAME.yaml`) in front of the bundled ones, as `--config-dir` does."""
    if output_dir is None:
        output_dir = Path("outputs") / recipe / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    extra = [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"] if config_dir is not None else []
    with initialize_config_module(config_module="speechtrain.conf", version_base="1.3"):
        return compose_root([f"recipe={recipe}", *overrides, *extra, f"paths.output_dir={Path(output_dir).resolve()}"])


RECIPE_NAME_FROM_CHOICE = "${hydra:runtime.choices.recipe}"  # conf/train.yaml's recipe_name


def compose_root(overrides: list[str]) -> DictConfig:
    """`hydra.compose` of the root config, inside an `initialize_config_*` block. Hydra sets no HydraConfig
    outside @hydra.main, so the root's `recipe_name: ${hydra:runtime.choices.recipe}` takes the recipe chosen
    here (unless a recipe or an override set it); the hydra node is dropped, as compose does by default."""
    cfg = hydra_compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        if OmegaConf.to_container(cfg, resolve=False).get("recipe_name") == RECIPE_NAME_FROM_CHOICE:
            cfg.recipe_name = cfg.hydra.runtime.choices.get("recipe")
        del cfg["hydra"]
    return cfg


def _resolve_ckpt_path(cfg: DictConfig, output_dir: Path) -> str | None:
    """`ckpt_path=last`: the newest checkpoint that a run in `output_dir` left, whichever wrote it: checkpoints/
    last.ckpt (ModelCheckpoint, on validation or every train_time_interval), checkpoints/on_exception.ckpt (an
    exception or SIGTERM) or hpc_ckpt_N.ckpt (Lightning on SLURM's SIGUSR1, in the run folder itself). Each may be a
    folder of shards under trainer=fsdp. None (a fresh start) when there is none."""
    if cfg.ckpt_path != "last":
        return cfg.ckpt_path
    candidates = [output_dir / "checkpoints" / "last.ckpt", output_dir / "checkpoints" / "on_exception.ckpt",
                  *output_dir.glob("hpc_ckpt_*.ckpt")]
    existing = [path for path in candidates if path.exists()]
    newest = max(existing, key=lambda path: path.stat().st_mtime_ns, default=None)
    if newest is not None:
        log.info("resuming from %s, the newest checkpoint of %s", newest, output_dir)
    return None if newest is None else str(newest)


MATMUL_PRECISIONS = ("highest", "high", "medium")


def _set_float32_matmul_precision(precision: str | None) -> None:
    """TF32 for fp32 matmuls on CUDA (`float32_matmul_precision: high`); nothing on the CPU, where it changes no
    result, so that CPU runs stay bit-exact whatever the setting."""
    if precision is None:
        return
    if precision not in MATMUL_PRECISIONS:
        raise ConfigError(f"float32_matmul_precision={precision!r}: expected one of {MATMUL_PRECISIONS} or null")
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision(precision)


def _taken_arguments(node: DictConfig, **inputs: Any) -> dict[str, Any]:
    """The `inputs` that the `_target_` of `node` takes by its signature (all of them if it takes `**kwargs`), so
    that a builder, data module or task is handed only what it uses; a recipe without one (None) passes nothing,
    leaving the target's default."""
    inputs = {name: value for name, value in inputs.items() if value is not None}
    parameters = inspect.signature(hydra.utils.get_object(node._target_)).parameters
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        return inputs
    return {name: value for name, value in inputs.items() if name in parameters}


def _scalar_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}


def _fetch_hub_model(cfg: DictConfig) -> None:
    """`model.pretrained=org/name` (a Hugging Face Hub id, not a local path): fetched or found in the Hub cache, and
    the config pointed at the local snapshot, so that the tokenizer, features and data configs that interpolate
    `${model.pretrained}` read the same folder. Runs before anything resolves those interpolations, so the Hub is
    asked once; a missing value is left for `check_required_values` to name."""
    model = cfg.get("model")
    if not OmegaConf.is_dict(model) or OmegaConf.is_missing(model, "pretrained"):
        return
    pretrained = model.get("pretrained")
    if not isinstance(pretrained, str):
        return
    local = resolve_pretrained(pretrained)
    if local != pretrained:
        log.info("model.pretrained=%s: the Hugging Face Hub snapshot in %s", pretrained, local)
        with open_dict(cfg):
            cfg.model.pretrained = local


def _compile_options(setting: Any) -> dict[str, Any] | None:
    """`compile` of the config as `torch.compile` options: false/null -> None (not compiled), true -> {}, a mode
    name -> {mode}, a mapping -> its keys (mode, backend, dynamic, fullgraph)."""
    if setting is None or setting is False:
        return None
    if setting is True:
        return {}
    if isinstance(setting, str):
        return {"mode": setting}
    if OmegaConf.is_dict(setting) or isinstance(setting, dict):
        options = dict(OmegaConf.to_container(setting) if OmegaConf.is_dict(setting) else setting)
        unknown = sorted(set(options) - {"mode", "backend", "dynamic", "fullgraph", "options"})
        if unknown:
            raise ConfigError(f"compile: unknown torch.compile option(s) {unknown}; use mode, backend, dynamic, "
                              "fullgraph or options")
        return options
    raise ConfigError(f"compile must be false, true, a torch.compile mode or a mapping of its options, got {setting!r}")


def build(cfg: DictConfig) -> tuple[L.LightningModule, L.LightningDataModule]:
    """The task (with its model, tokenizer and feature extractor) and the data module of a config."""
    _fetch_hub_model(cfg)
    check_required_values(cfg)
    check_targets(cfg)
    # Token-only recipes (SoundStorm, Bark's coarse and fine models) have no tokenizer; TTS recipes compute
    # spectrograms in their data module and task, so only ASR recipes have a feature extractor.
    tokenizer = hydra.utils.instantiate(cfg.tokenizer) if cfg.get("tokenizer") else None
    feature_extractor = hydra.utils.instantiate(cfg.features) if cfg.get("features") else None
    inputs = {"tokenizer": tokenizer, "feature_extractor": feature_extractor}
    model = hydra.utils.instantiate(cfg.model, **_taken_arguments(cfg.model, **inputs))
    datamodule = hydra.utils.instantiate(cfg.data, **_taken_arguments(cfg.data, **inputs))
    task = hydra.utils.instantiate(cfg.task, **_taken_arguments(cfg.task, **inputs), model=model)
    if cfg.data.get("test") and not is_overridden("test_step", task):
        raise ConfigError(f"data.test is set but {type(task).__name__} has no test pass; remove data.test")
    return task, datamodule


def train(cfg: DictConfig) -> dict[str, float]:
    """Train (and export) as `cfg` says; returns the final logged metrics as floats."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # Once anything in the process has called torch.set_num_threads (a test, a notebook cell, a library), some CPU
    # kernels split their work differently and results change in the last bits: setting the count at the start of
    # every run makes a reused process compute what a fresh one does, which exact resume relies on.
    torch.set_num_threads(cfg.get("cpu_threads") or torch.get_num_threads())
    _set_float32_matmul_precision(cfg.get("float32_matmul_precision"))
    L.seed_everything(cfg.seed, workers=True)

    task, datamodule = build(cfg)
    model = task.model
    pretrained = cfg.model.get("pretrained")
    loggers = [hydra.utils.instantiate(c) for c in cfg.get("logger", {}).values()]
    callbacks = [RankSeed(cfg.seed)] + [hydra.utils.instantiate(c) for c in cfg.get("callbacks", {}).values()]
    if not loggers:  # logger=none: Lightning's learning-rate monitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    strategy = cfg.trainer.get("strategy", "auto")
    strategy = build_strategy(hydra.utils.instantiate(strategy) if OmegaConf.is_dict(strategy) else strategy, task)
    if cfg.get("activation_checkpointing"):
        if isinstance(strategy, FullyShardedStrategy):
            strategy.activation_checkpointing = True  # FSDP wraps the same blocks itself
        else:
            log.info("activation checkpointing: %d blocks recompute their activations in the backward pass",
                     checkpoint_block_activations(task))
    compile_options = _compile_options(cfg.get("compile"))
    if compile_options is not None:  # after the checkpointing wrappers, before FSDP shards the compiled blocks
        log.info("torch.compile: %d blocks compiled (%s)", compile_blocks(task, compile_options),
                 compile_options or "default options")
    # The data module's bucketing sampler shards across ranks itself.
    trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, strategy=strategy,
                                      use_distributed_sampler=False)

    checkpoint_dir = output_dir / "checkpoints"
    checkpoint_dir.mkdir(exist_ok=True)
    (checkpoint_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    log.info("model: %s, %.2f M parameters", type(model).__name__, sum(p.numel() for p in model.parameters()) / 1e6)

    trainer.fit(task, datamodule=datamodule, ckpt_path=_resolve_ckpt_path(cfg, output_dir))
    metrics = _scalar_metrics(trainer)
    if any(getattr(callback, "preempted", False) for callback in trainer.callbacks):
        log.info("preempted: the requeued job resumes from the hpc checkpoint; the run is tested and exported when it "
                 "has finished")
        return metrics
    if getattr(datamodule, "test_dataset", None) is not None:  # data.test: scored once, with the final weights
        trainer.test(task, datamodule=datamodule, verbose=False)
        metrics.update(_scalar_metrics(trainer))

    exported_model = full_model(model) if cfg.export else None  # under FSDP a collective gather, rank 0 keeps it
    if cfg.export and trainer.is_global_zero:
        export_dir = output_dir / "exported"
        save_bundle(export_dir, exported_model, task.tokenizer, task.feature_extractor)
        if getattr(task, "peft_adapter", None) is not None:  # a LoRA run: the adapters alone too, in peft's format
            adapter_config, adapter = task.peft_adapter
            adapter_config = {**adapter_config, "base_model_name_or_path": pretrained}
            save_peft_adapter(export_dir / "adapter", adapter_config, adapter)
        write_model_card(export_dir, f"the end of the run in `{output_dir}` (step {trainer.global_step})",
                         (checkpoint_dir / "config.yaml").read_text(), metrics)
        log.info("exported a Hugging Face-format model to %s", export_dir)
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()  # the next job of a multirun must start its own W&B run
    if trainer.is_global_zero:  # one writer: a sweep's launcher reads the trial's metric from it
        atomic_write_bytes(output_dir / "metrics.json", (json.dumps(metrics, indent=2, sort_keys=True) + "\n").encode())
    log.info("metrics: %s", metrics)
    return metrics


# What the user got wrong: speechtrain's own error types, missing paths and config syntax or interpolation errors.
_USER_ERRORS = (SpeechtrainError, FileNotFoundError, NotADirectoryError, OmegaConfBaseException)


def _raised_in(exc: BaseException, function_name: str) -> bool:
    """True if `exc` was raised by `function_name` itself rather than in something it called."""
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and frame.tb_frame.f_code.co_name == function_name


def user_mistake(exc: BaseException) -> BaseException | None:
    """The configuration or data mistake behind `exc`, if that is what it is, else None (a bug).

    Hydra wraps what a `_target_` raises in `InstantiationException`, and a target it cannot import in
    `ImportError`. Unwrapped, a user mistake stays one: an unknown or missing argument (a `TypeError` raised by
    the call itself, before entering the target), a target that does not exist, speechtrain's own error types.
    Any other cause is the real error (an extension that does not load, a bug) and must show its traceback."""
    while isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        if isinstance(exc.__cause__, TypeError) and _raised_in(exc.__cause__, "_call_target"):
            return exc
        exc = exc.__cause__
    if isinstance(exc, ImportError) and not isinstance(exc, SpeechtrainError) and exc.__cause__ is not None:
        cause = exc.__cause__  # Hydra's _locate: "Error loading 'a.b.c'" from what the import raised
        while isinstance(cause, ImportError) and not isinstance(cause, SpeechtrainError) and cause.__cause__:
            cause = cause.__cause__
        if isinstance(cause, SpeechtrainError):
            return cause
        target = re.search(r"Error loading '([^']+)'", str(exc))
        missing_module = isinstance(cause, ModuleNotFoundError) and cause.name is not None and target is not None \
            and (target.group(1) + ".").startswith(cause.name + ".")
        missing_attribute = isinstance(cause, AttributeError) and _raised_in(cause, "_locate")
        return exc if missing_module or missing_attribute else None
    return exc if isinstance(exc, _USER_ERRORS) else None


def _real_error(exc: BaseException) -> BaseException:
    """The innermost cause of a Hydra-wrapped error, to re-raise with its own traceback."""
    while isinstance(exc, (InstantiationException, ImportError)) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    try:
        check_trial_launch(cfg, HydraConfig.get().mode)
        metrics = train(cfg)
    except Exception as exc:
        mistake = user_mistake(exc)
        if mistake is None:
            real = _real_error(exc)
            if real is exc:
                raise
            raise real from None
        if os.environ.get("SPEECHTRAIN_DEBUG"):
            raise
        message = str(mistake).strip().strip('"')
        hint = "" if isinstance(mistake, DependencyError) else (
            " Check the recipe and the overrides on the command line; set SPEECHTRAIN_DEBUG=1 for the full traceback.")
        print(f"speechtrain: error: {message} ({type(mistake).__name__}).{hint}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise mistake from None  # Hydra records the job as failed and runs the next; exiting would end the sweep
        sys.exit(1)
    return metrics.get(cfg.optimized_metric)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
