import importlib.util
import json
import shlex
from pathlib import Path

import pytest

from speechtrain.data.corpora import FORMATS, read_corpus, read_libritts, read_manifest
from speechtrain.train import CONFIG_DIR

REPO_DIR = Path(__file__).resolve().parents[2]  # the checkout: train.py and recipes/


def write_libritts(root, make_wav) -> None:
    """Two chapters of two speakers, one wav without a transcript (left out) and one broken wav."""
    for speaker, chapter, index, seconds in [("19", "198", 0, 0.5), ("19", "198", 1, 0.3), ("26", "495", 0, 0.4)]:
        utterance = f"{speaker}_{chapter}_000000_00000{index}"
        folder = root / speaker / chapter
        make_wav(folder / f"{utterance}.wav", seconds, sample_rate=24000, subtype="PCM_16")
        (folder / f"{utterance}.normalized.txt").write_text(f"Text {speaker} {index}.\n")
        (folder / f"{utterance}.original.txt").write_text(f"TEXT {speaker} {index}")
    make_wav(root / "26" / "495" / "26_495_000000_000009.wav", 0.2)  # no transcript
    (root / "26" / "495" / "26_495_000001_000000.wav").write_bytes(b"broken")
    (root / "26" / "495" / "26_495_000001_000000.normalized.txt").write_text("Broken.")


def test_reader_pairs_wavs_with_normalized_transcripts(tmp_path, make_wav):
    write_libritts(tmp_path / "dev-clean", make_wav)
    utterances = read_libritts(tmp_path / "dev-clean")
    assert [(u.id, u.text, u.speaker) for u in utterances] == [
        ("19_198_000000_000000", "Text 19 0.", "19"), ("19_198_000000_000001", "Text 19 1.", "19"),
        ("26_495_000000_000000", "Text 26 0.", "26"), ("26_495_000001_000000", "Broken.", "26"),
    ]
    assert utterances[0].audio_path == str(tmp_path / "dev-clean" / "19" / "198" / "19_198_000000_000000.wav")
    assert "libritts" in FORMATS
    assert read_corpus({"format": "libritts", "path": str(tmp_path / "dev-clean"), "limit": 2}) == utterances[:2]
    with pytest.raises(FileNotFoundError, match="LibriTTS layout"):
        read_libritts(tmp_path / "nothing")


def load_prepare_module():
    spec = importlib.util.spec_from_file_location("libritts_prepare", REPO_DIR / "recipes" / "libritts" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_writes_manifests_and_tokenizes_with_one_kmeans(tmp_path, make_wav, capsys, monkeypatch):
    for subset in ("train-clean-100", "dev-clean"):
        write_libritts(tmp_path / "LibriTTS" / subset, make_wav)
    prepare = load_prepare_module()
    manifests = prepare.prepare_libritts(tmp_path, ["train-clean-100", "dev-clean"], fetch=False)
    assert manifests == [tmp_path / "LibriTTS" / "train-clean-100.jsonl", tmp_path / "LibriTTS" / "dev-clean.jsonl"]
    rows = [json.loads(line) for line in manifests[1].read_text().splitlines()]
    assert [round(r["duration"], 2) for r in rows] == [0.5, 0.3, 0.4]
    assert [u.speaker for u in read_manifest(manifests[1])] == ["19", "19", "26"]
    assert "26_495_000001_000000.wav" in capsys.readouterr().err

    calls = []
    monkeypatch.setattr(prepare.tokenize, "main", calls.append)
    folders = prepare.tokenize_subsets(manifests, tmp_path / "tokens", ["--device", "cpu"])
    assert folders == [tmp_path / "tokens" / "train-clean-100", tmp_path / "tokens" / "dev-clean"]
    assert "--kmeans" not in calls[0] and calls[0][-2:] == ["--device", "cpu"]
    assert calls[1][calls[1].index("--kmeans") + 1] == str(folders[0] / "kmeans.safetensors")
    assert calls[1][calls[1].index("--corpus-path") + 1] == str(manifests[1])


def shell_commands(text: str) -> list[list[str]]:
    """The `python ...` commands in a text (README code blocks, config comments), continuation lines joined, split
    as a shell would."""
    commands, pending = [], None
    for line in text.splitlines():
        stripped = line.lstrip("# ").strip()
        if pending is None and not stripped.startswith("python "):
            continue
        part = stripped.rstrip("\\").strip()
        pending = part if pending is None else f"{pending} {part}"
        if not stripped.endswith("\\"):
            commands.append(shlex.split(pending))
            pending = None
    return commands


def option(command: list[str], name: str) -> list[str]:
    start = command.index(name) + 1
    end = next((i for i in range(start, len(command)) if command[i].startswith("--")), len(command))
    return command[start:end]


def test_the_readme_commands_lead_into_the_recipe(compose, tmp_path, monkeypatch):
    readme = shell_commands((REPO_DIR / "recipes" / "libritts" / "README.md").read_text())
    recipe_comment = shell_commands((CONFIG_DIR / "recipe" / "soundstorm_libritts.yaml").read_text())
    tokens_command = next(command for command in readme if "--tokens" in command)
    (train_command,) = [command for command in readme if command[:2] == ["python", "train.py"]]
    assert train_command in recipe_comment
    for command in recipe_comment:  # the recipe's own instructions name the same folders
        for name in ("--root", "--tokens", "--subsets"):
            assert name not in command or option(command, name) == option(tokens_command, name)

    calls = []
    prepare = load_prepare_module()
    monkeypatch.setattr(prepare.tokenize, "main", calls.append)
    (root,), (tokens,) = option(tokens_command, "--root"), option(tokens_command, "--tokens")
    manifests = [Path(root) / "LibriTTS" / f"{subset}.jsonl" for subset in option(tokens_command, "--subsets")]
    train_folder, val_folder = prepare.tokenize_subsets(manifests, Path(tokens), [])
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPEECHTRAIN_DATA_DIR", raising=False)
    cfg = compose(*train_command[2:], output_dir=tmp_path / "run")
    assert cfg.recipe_name == "soundstorm_libritts"
    assert Path(cfg.paths.data_dir) == tmp_path / root  # where step 1 puts the corpus
    assert Path(cfg.data.tokens_dir) == tmp_path / train_folder and Path(cfg.data.val_dir) == tmp_path / val_folder
