"""A fresh install works: exact pins for what shares torch's C++ ABI, one sentence when torchaudio does not load,
configs and bundled data inside the package, and the notebook API."""

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import speechtrain
from speechtrain import dependencies
from speechtrain.errors import DependencyError
from speechtrain.train import BUNDLED_DATA_DIR, CONFIG_DIR

REPO_DIR = Path(__file__).resolve().parents[1]  # the checkout: pyproject.toml and train.py
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def test_torch_and_torchaudio_are_pinned_exactly_to_the_pair_the_code_names():
    requirements = tomllib.loads((REPO_DIR / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {name: spec for name, _, spec in (r.partition("==") for r in requirements)
            if name in ("torch", "torchaudio")}
    assert pins == {"torch": dependencies.TORCH_VERSION, "torchaudio": dependencies.TORCHAUDIO_VERSION}
    assert all(spec.count(".") == 2 and "*" not in spec for spec in pins.values()), pins


def test_the_package_holds_its_configs_and_the_bundled_corpora():
    assert CONFIG_DIR.parent == BUNDLED_DATA_DIR.parent == Path(speechtrain.__file__).parent
    assert (CONFIG_DIR / "train.yaml").is_file() and (CONFIG_DIR / "recipe" / "whisper_mini.yaml").is_file()
    assert (BUNDLED_DATA_DIR / "mini" / "metadata.csv").is_file()
    assert (BUNDLED_DATA_DIR / "mini_tokens" / "tokens.json").is_file()
    package_data = tomllib.loads((REPO_DIR / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "**/*.yaml" in package_data["speechtrain.conf"] and "assets/**/*" in package_data["speechtrain"]


def test_a_torchaudio_that_does_not_load_is_one_sentence_naming_both_versions(monkeypatch):
    def broken_import(name):
        raise OSError("libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace")

    monkeypatch.setattr(dependencies.importlib, "import_module", broken_import)
    monkeypatch.setattr(dependencies, "installed_version", {"torch": "2.11.0", "torchaudio": "2.11.1"}.get)
    with pytest.raises(DependencyError) as raised:
        dependencies.import_torchaudio()
    message = str(raised.value)
    assert message.startswith("torchaudio 2.11.1 does not load with torch 2.11.0 (libtorchaudio.so: undefined symbol")
    assert message.endswith("pip install torch==2.11.0 torchaudio==2.11.0") and message.count(". ") == 0


def test_train_py_with_a_broken_torchaudio_says_so_instead_of_error_locating_target(tmp_path):
    fake = tmp_path / "site" / "torchaudio"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "raise OSError('libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace')\n")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(REPO_DIR)])}
    result = subprocess.run([sys.executable, str(REPO_DIR / "train.py"), f"hydra.run.dir={tmp_path}/run"],
                            cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Error locating target" not in result.stderr and "Traceback" not in result.stderr
    assert f"does not load with torch {metadata.version('torch')}" in result.stderr
    assert "undefined symbol" in result.stderr and "pip install torch==2.11.0 torchaudio==2.11.0" in result.stderr


def test_version_is_the_installed_distributions():
    assert speechtrain.__version__ == metadata.version("speechtrain")


def test_compose_and_fit_run_a_users_own_recipe_folder_from_a_notebook(tmp_path, monkeypatch):
    """The Python API: no Hydra boilerplate, a recipe of the user's joining the bundled ones, metrics returned,
    outputs under the working folder."""
    recipes = tmp_path / "my_configs" / "recipe"
    recipes.mkdir(parents=True)
    (recipes / "my_whisper.yaml").write_text(
        "# @package _global_\ndefaults:\n  - whisper_mini\ntrainer:\n  max_epochs: 1\n")  # named by its file
    monkeypatch.chdir(tmp_path)
    cfg = speechtrain.compose("my_whisper", "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1",
                              "logger=none", "~callbacks.progress_bar", "+trainer.enable_progress_bar=false",
                              "trainer.accelerator=cpu", "trainer.check_val_every_n_epoch=1",
                              config_dir=tmp_path / "my_configs")
    assert cfg.recipe_name == "my_whisper" and cfg.trainer.max_epochs == 1
    assert Path(cfg.paths.output_dir).is_relative_to(tmp_path / "outputs" / "my_whisper")
    assert cfg.paths.data_dir == str(tmp_path / "data")
    metrics = speechtrain.fit(cfg)
    assert "train/loss" in metrics and "val/wer" in metrics
    assert (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").is_file()
    assert (Path(cfg.paths.output_dir) / "exported" / "model.safetensors").is_file()
