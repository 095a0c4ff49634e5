import importlib.util
import json
from pathlib import Path

from speechtrain.data.corpora import read_manifest

REPO_DIR = Path(__file__).resolve().parents[2]  # the checkout: train.py and recipes/


def load_prepare_module():
    spec = importlib.util.spec_from_file_location("prepare", REPO_DIR / "recipes" / "librispeech" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_manifests_from_an_unpacked_part_carry_durations_and_skip_unreadable_files(tmp_path, make_wav, capsys):
    chapter = tmp_path / "LibriSpeech" / "dev-clean" / "84" / "121123"
    make_wav(chapter / "84-121123-0000.flac", 1.5, subtype="PCM_16")
    make_wav(chapter / "84-121123-0001.flac", 0.5, subtype="PCM_16")
    (chapter / "84-121123-0002.flac").write_bytes(b"not flac")
    (chapter / "84-121123.trans.txt").write_text(
        "84-121123-0000 GO DO YOU HEAR\n84-121123-0001 BUT IN LESS THAN FIVE MINUTES\n84-121123-0002 BROKEN\n"
    )
    [manifest] = load_prepare_module().prepare_librispeech(tmp_path, ["dev-clean"], fetch=False)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [round(r["duration"], 2) for r in rows] == [1.5, 0.5]
    assert [u.text for u in read_manifest(manifest)] == ["GO DO YOU HEAR", "BUT IN LESS THAN FIVE MINUTES"]
    assert "84-121123-0002.flac" in capsys.readouterr().err
