"""Checks of a config dataclass's fields in `__post_init__`, the same way for every family and layer.

Each check reads the named fields of `config` and raises a `ConfigError` that names the class, the field, the
value and what it must be (`WhisperConfig.d_model must be a positive integer, got True`). Booleans are not
integers here although Python says they are: `encoder_layers: true` in a YAML file is a typo, not one layer.
(Not to be confused with `speechtrain.config_checks`, which checks a composed Hydra config against the
signatures of its targets.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from speechtrain.errors import ConfigError


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _name(config: Any, field: str) -> str:
    return f"{type(config).__name__}.{field}"


def check_positive_int(config: Any, *names: str) -> None:
    """Each field is an integer >= 1."""
    for name in names:
        value = getattr(config, name)
        if not _is_int(value) or value < 1:
            raise ConfigError(f"{_name(config, name)} must be a positive integer, got {value!r}")


def check_non_negative_int(config: Any, *names: str, why: str = "") -> None:
    """Each field is an integer >= 0; `why` (e.g. "0 = unconditional") is added to the message."""
    for name in names:
        value = getattr(config, name)
        if not _is_int(value) or value < 0:
            note = f" ({why})" if why else ""
            raise ConfigError(f"{_name(config, name)} must be a non-negative integer{note}, got {value!r}")


def check_probability(config: Any, *names: str, include_one: bool = False) -> None:
    """Each field is a number in [0, 1) (a dropout rate), or in [0, 1] with `include_one` (a masking share)."""
    for name in names:
        value = getattr(config, name)
        inside = isinstance(value, (int, float)) and not isinstance(value, bool) and (
            0.0 <= value <= 1.0 if include_one else 0.0 <= value < 1.0)
        if not inside:
            raise ConfigError(f"{_name(config, name)}={value!r} must be in {'[0, 1]' if include_one else '[0, 1)'}")


def check_positive(config: Any, *names: str, unit: str = "") -> None:
    """Each field is a number > 0 (a rate, a scale, an epsilon); `unit` (e.g. "Hz") is added to the message."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"{_name(config, name)}={value!r} must be positive{f' (in {unit})' if unit else ''}")


def check_choice(config: Any, name: str, choices: Sequence[Any]) -> None:
    """The field is one of `choices`."""
    value = getattr(config, name)
    if value not in choices:
        raise ConfigError(f"{_name(config, name)}={value!r} is not one of {tuple(choices)}")


def check_divisible(config: Any, name: str, *divisors: str) -> None:
    """The field is a multiple of each of the `divisors` fields (a width split into attention heads)."""
    value = getattr(config, name)
    for divisor in divisors:
        if value % getattr(config, divisor):
            raise ConfigError(f"{_name(config, name)}={value} must be divisible by "
                              f"{divisor}={getattr(config, divisor)}")


def check_token_ids(config: Any, *names: str, vocab_size: int, optional: bool = False) -> None:
    """Each field is a token id inside the vocabulary [0, vocab_size); with `optional` it may also be None."""
    for name in names:
        value = getattr(config, name)
        if optional and value is None:
            continue
        if not _is_int(value) or not 0 <= value < vocab_size:
            allowed = "None or an id" if optional else "an id"
            raise ConfigError(f"{_name(config, name)}={value!r} must be {allowed} inside the vocabulary "
                              f"[0, {vocab_size})")
