"""Generic modules read the model registry and name no family: a sixth family touches its own folder only."""

import ast
from pathlib import Path

import pytest

from speechtrain.errors import ConfigError
from speechtrain.models.registry import ModelCard, ModelFamily, families, register

PACKAGE = Path(__file__).resolve().parents[1] / "speechtrain"
GENERIC = [PACKAGE / "hub.py", PACKAGE / "model_card.py", PACKAGE / "distributed.py", PACKAGE / "train.py",
           *sorted((PACKAGE / "cli").glob("*.py"))]
SHARED_MODEL_MODULES = {"speechtrain.models", "speechtrain.models.registry", "speechtrain.models.hf_config"}


def family_imports(source: str) -> list[str]:
    """The modules of `speechtrain.models` other than the shared ones that `source` imports."""
    imported = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.append(node.module)
            if node.module == "speechtrain.models":  # from speechtrain.models import whisper
                imported += [f"speechtrain.models.{alias.name}" for alias in node.names]
    return [name for name in imported
            if name.startswith("speechtrain.models.") and name not in SHARED_MODEL_MODULES]


def test_the_check_sees_every_import_form():
    source = ("import speechtrain.models.vits\nfrom speechtrain.models.whisper.hub import build_whisper\n"
              "from speechtrain.models import bark\nfrom speechtrain.models.registry import get_family\n")
    assert family_imports(source) == ["speechtrain.models.vits", "speechtrain.models.whisper.hub",
                                      "speechtrain.models.bark"]


@pytest.mark.parametrize("path", GENERIC, ids=lambda path: path.name)
def test_generic_module_imports_no_family(path):
    assert family_imports(path.read_text()) == [], f"{path} names a model family; read the registry instead"


def test_every_family_folder_is_found():
    folders = {path.parent.name for path in (PACKAGE / "models").glob("*/family.py")}
    found = {family.build.__module__.split(".")[2] for family in families().values()}
    assert folders == found == {"bark", "soundstorm", "speech2text", "vits", "whisper"}


def test_a_model_type_cannot_be_taken_twice():
    whisper = families()["whisper"]
    register(whisper)  # the same record again is harmless
    impostor = ModelFamily("whisper", dict, dict, dict, dict, dict, ModelCard("", "", ""))
    with pytest.raises(ConfigError, match="registered twice"):
        register(impostor)
    assert families()["whisper"] is whisper
