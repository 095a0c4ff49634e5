"""What the user got wrong is one paragraph naming the key; a bug shows its traceback."""

import os
import subprocess
import sys
from pathlib import Path

import hydra
import lightning as L
import pytest
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from speechtrain.config_checks import check_targets
from speechtrain.errors import ConfigError
from speechtrain.train import user_mistake

REPO_DIR = Path(__file__).resolve().parents[1]  # the checkout: train.py
TESTS_DIR = Path(__file__).resolve().parent
TINY = ["trainer.max_epochs=1", "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=0", "logger=none",
        "export=false", "~callbacks.progress_bar", "+trainer.enable_progress_bar=false", "trainer.accelerator=cpu"]


class Settings:
    """A `_target_` for the checks below."""

    def __init__(self, rate: float, steps: int | None = None, name: str = "x", flags: list[str] | None = None) -> None:
        if rate > 1:
            raise TypeError("a bug inside the constructor")
        self.rate, self.steps = rate, steps


class BreakTheModelsForward(L.Callback):
    """Makes the model's forward raise a TypeError, as a bug deep in a model would."""

    def on_train_start(self, trainer, pl_module) -> None:
        def broken_forward(*args, **kwargs):
            return "text" + 1  # TypeError: can only concatenate str (not "int") to str

        pl_module.model.forward = broken_forward


def run_train_py(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(REPO_DIR / "train.py"), *TINY, *overrides, f"hydra.run.dir={cwd}/run"],
                          cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)


def node(**values):
    return OmegaConf.create({"_target_": f"{__name__}.Settings", **values})


def test_config_values_are_checked_against_the_targets_annotations():
    check_targets(OmegaConf.create({"task": node(rate=1, steps=None, flags=["a"]), "other": {"plain": "dict"}}))
    with pytest.raises(ConfigError, match=r"task\.rate='fast' should be int or float \(an argument of .*Settings\)"):
        check_targets(OmegaConf.create({"task": node(rate="fast")}))
    with pytest.raises(ConfigError, match=r"task\.inner\.steps=2\.5 should be int or null"):
        check_targets(OmegaConf.create({"task": {"inner": node(rate=0.5, steps=2.5)}}))
    with pytest.raises(ConfigError, match=r"task\.flags='a' should be list"):
        check_targets(OmegaConf.create({"task": node(rate=0.5, flags="a")}))
    with pytest.raises(ConfigError, match=r"task\.rat is not an argument of .*Settings; its arguments are: rate, "):
        check_targets(OmegaConf.create({"task": node(rat=0.5)}))


def test_a_type_error_inside_a_target_is_a_bug_and_a_wrong_argument_is_a_mistake():
    with pytest.raises(InstantiationException) as inside:
        hydra.utils.instantiate(node(rate=2.0))
    assert user_mistake(inside.value) is None
    with pytest.raises(InstantiationException) as call:
        hydra.utils.instantiate(node(rate=0.5, unknown=1))
    assert user_mistake(call.value) is call.value
    assert user_mistake(ConfigError("task.x is wrong")) is not None
    assert user_mistake(KeyError("a bug")) is None and user_mistake(ValueError("a bug")) is None


def test_a_type_error_in_a_models_forward_shows_its_traceback(tmp_path):
    result = run_train_py(f"+callbacks.bug._target_={Path(__file__).stem}.BreakTheModelsForward", cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "broken_forward" in result.stderr
    assert "TypeError: can only concatenate str" in result.stderr and "speechtrain: error" not in result.stderr


def test_a_mistyped_config_value_is_one_paragraph_naming_the_key(tmp_path):
    result = run_train_py("trainer.max_epochs=two", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "speechtrain: error: trainer.max_epochs='two' should be int or null" in result.stderr
