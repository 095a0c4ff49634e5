"""Checks a composed config before anything is built: values left to the user, and the signatures of its `_target_`s.

A mistyped key (`task.optimizer.lrr`) or value (`trainer.max_epochs=two`) would otherwise surface as a
`TypeError` from deep inside a constructor, indistinguishable from a bug. Here each one becomes a
`ConfigError` that names the full key, the value, what was expected and the target it is for, as
torchtune's config validator does for its `_component_`s.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from speechtrain.errors import ConfigError
from speechtrain.models.registry import family_of_builder

_SCALARS: dict[type, tuple[type, ...]] = {
    bool: (bool,),
    int: (int,),
    float: (int, float),
    str: (str,),
    Path: (str, Path),
}


def _accepted(annotation: Any) -> tuple[type, ...] | None:
    """The Python types a config value may have for `annotation`, or None where the annotation says too little
    to check (a class, a callable, `Any`)."""
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    if annotation is type(None) or annotation is None:
        return (type(None),)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        accepted: tuple[type, ...] = ()
        for member in typing.get_args(annotation):
            member_types = _accepted(member)
            if member_types is None:
                return None
            accepted += member_types
        return accepted
    if origin in (list, tuple, Sequence) or annotation in (list, tuple):
        return (ListConfig, list, tuple)
    if origin in (dict, Mapping) or annotation is dict:
        return (DictConfig, dict)
    return None


def _type_names(accepted: tuple[type, ...]) -> str:
    names = {ListConfig: "list", DictConfig: "dict", type(None): "null"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in accepted))


def _parameters(target: Any) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool] | None:
    """(parameters, resolved annotations, takes **kwargs) of a callable target, or None if it cannot be read."""
    function = target.__init__ if inspect.isclass(target) else target
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # annotations naming what the module cannot resolve: check the names, not the types
        hints = {}
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    return dict(signature.parameters), hints, takes_kwargs


def check_targets(cfg: DictConfig, prefix: str = "") -> None:
    """Raises `ConfigError` for the first key of a `_target_` node in `cfg` (recursively) that its target does not
    take, or whose value has a type the target's annotation rules out."""
    nodes = cfg.items_ex(resolve=False) if isinstance(cfg, DictConfig) else enumerate(cfg)
    for key, node in nodes:
        if isinstance(node, (DictConfig, ListConfig)):
            check_targets(node, f"{prefix}{key}.")
    if not isinstance(cfg, DictConfig) or "_target_" not in cfg:
        return
    try:
        target = get_object(cfg._target_)
    except Exception:  # Hydra reports a target it cannot locate itself, with the import error behind it
        return
    described = _parameters(target)
    if described is None:
        return
    parameters, hints, takes_kwargs = described
    for key in cfg:
        if key.startswith("_"):
            continue
        full_key = f"{prefix}{key}"
        if key not in parameters:
            if takes_kwargs:
                continue
            known = ", ".join(name for name in parameters if name not in ("self", "args", "kwargs"))
            raise ConfigError(f"{full_key} is not an argument of {cfg._target_}; its arguments are: {known}")
        if OmegaConf.is_missing(cfg, key) or key not in hints:
            continue
        value = cfg[key]
        if isinstance(value, DictConfig) and "_target_" in value:
            continue
        accepted = _accepted(hints[key])
        if accepted is not None and not isinstance(value, accepted):
            raise ConfigError(f"{full_key}={value!r} should be {_type_names(accepted)} (an argument of "
                              f"{cfg._target_})")


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
        family = family_of_builder(str(cfg.model.get("_target_", "")))  # its registry entry says where to get one
        example = family.pretrained_example if family is not None and family.pretrained_example else (
            "a model of this family")
        raise ConfigError(
            f"model.pretrained is not set: {recipe} starts from a pretrained model. Add model.pretrained=PATH, "
            f"PATH a Hugging Face-format model folder (config.json and the weights, with its tokenizer files), "
            f"e.g. {example}; a folder exported by speechtrain works too"
        )
    raise ConfigError(f"{missing[0]} is not set: {recipe} needs a value there; add {missing[0]}=VALUE to the command "
                      "line (see the recipe's comments)")
