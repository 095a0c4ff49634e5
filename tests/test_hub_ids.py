"""Hugging Face Hub ids wherever a model folder is expected: `model.pretrained=org/name` in a recipe, and the
folders the commands load, resolved through a Hub cache that the test lays out as huggingface_hub does, offline."""

from pathlib import Path

import pytest
import torch

from speechtrain.hub import load_bundle, resolve_pretrained, save_bundle
from speechtrain.train import build

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline_cache(compose, tmp_path, monkeypatch) -> Path:
    """A Hub cache holding `speechtrain-tests/whisper-mini` (the default recipe's untrained Whisper) at `main`, with
    HF_HUB_OFFLINE=1 so that nothing may be downloaded."""
    cache = tmp_path / "hub"
    repo = cache / "models--speechtrain-tests--whisper-mini"
    torch.manual_seed(0)
    task, _ = build(compose("recipe=whisper_mini", output_dir=tmp_path / "base"))
    save_bundle(repo / "snapshots" / COMMIT, task.model, task.tokenizer, task.feature_extractor)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return repo / "snapshots" / COMMIT


def test_a_recipe_fine_tunes_from_a_hub_id_in_the_offline_cache(compose, offline_cache, tmp_path):
    cfg = compose("recipe=whisper_finetune", "model.pretrained=speechtrain-tests/whisper-mini", output_dir=tmp_path)
    task, _ = build(cfg)
    assert Path(cfg.model.pretrained) == offline_cache  # the tokenizer and features interpolate the same folder
    expected, _, _ = load_bundle(offline_cache)
    for name, weight in expected.state_dict().items():
        assert torch.equal(task.model.state_dict()[name], weight), name
    assert task.tokenizer.prefix_ids == load_bundle("speechtrain-tests/whisper-mini")[1].prefix_ids


def test_an_id_missing_from_the_offline_cache_is_named_with_the_fix(offline_cache):
    with pytest.raises(FileNotFoundError, match=r"speechtrain-tests/not-there: .*HF_HUB_OFFLINE=1 .*huggingface-cli "
                                                r"download speechtrain-tests/not-there"):
        resolve_pretrained("speechtrain-tests/not-there")


def test_local_paths_are_never_taken_for_hub_ids(offline_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "mine").mkdir(parents=True)
    assert resolve_pretrained("models/mine") == "models/mine"  # exists: a folder, even though it looks like an id
    assert resolve_pretrained("/no/such/folder") == "/no/such/folder"  # an absolute path is never an id


def test_a_hub_dataset_id_reads_its_cached_audiofolder_snapshot(tmp_path, monkeypatch):
    from speechtrain.data.corpora import read_corpus
    from speechtrain.train import BUNDLED_DATA_DIR

    snapshot = tmp_path / "hub" / "datasets--speechtrain-tests--mini" / "snapshots" / COMMIT
    (snapshot / "audio").mkdir(parents=True)
    (snapshot / "audio" / "a.wav").write_bytes((BUNDLED_DATA_DIR / "mini" / "wavs" / "mini_0001.wav").read_bytes())
    (snapshot / "metadata.csv").write_text("file_name,text\naudio/a.wav,The cat sleeps by the warm window.\n")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    [utterance] = read_corpus({"format": "hf", "path": "speechtrain-tests/mini"})
    assert utterance.text == "The cat sleeps by the warm window." and Path(utterance.audio_path).is_file()
    with pytest.raises(FileNotFoundError, match="--repo-type dataset speechtrain-tests/other"):
        read_corpus({"format": "hf", "path": "speechtrain-tests/other"})
