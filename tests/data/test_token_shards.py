import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file, save_file
from tiny_tokenizers import one_torch_thread, tiny_codec, tiny_hubert  # noqa: F401 (an autouse fixture)

from speechtrain.data import token_shards
from speechtrain.data.audio import load_audio
from speechtrain.data.semantic import KMeans
from speechtrain.data.token_shards import read_token_info, read_token_shards, tokenize_corpus
from speechtrain.train import BUNDLED_DATA_DIR

MINI = BUNDLED_DATA_DIR / "mini"
SPEC = {"format": "ljspeech", "path": str(MINI), "limit": 4}
KMEANS = dict(kmeans_clusters=8, kmeans_utterances=2, kmeans_iterations=10)


def tokenize(out: Path, spec=SPEC, codec=None, semantic=None, **kwargs) -> Path:
    return tokenize_corpus(spec, out, codec or tiny_codec(), semantic or tiny_hubert(),
                           **{"shard_size": 2, **KMEANS, **kwargs})


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """Four mini utterances in two shards, written once for the tests that only read."""
    return tokenize(tmp_path_factory.mktemp("tokens") / "reference")


def test_writing_twice_gives_identical_files(reference, tmp_path):
    files = folder_bytes(reference)
    assert sorted(files) == ["kmeans.safetensors", "shard-00000.jsonl", "shard-00000.safetensors",
                             "shard-00001.jsonl", "shard-00001.safetensors", "tokens.json"]
    assert folder_bytes(tokenize(tmp_path / "again")) == files
    info = read_token_info(reference)
    assert [s["utterances"] for s in info["shards"]] == [2, 2] and info["skipped"] == []
    assert info["codec"]["num_levels"] == 8 and info["semantic"]["num_clusters"] == 8
    assert info["corpus"]["path"] == str(MINI) and info["corpus"]["limit"] == 4


def test_reader_returns_what_the_encoders_give(reference):
    codec, semantic = tiny_codec(), tiny_hubert()
    semantic.kmeans = KMeans.load(reference / "kmeans.safetensors")
    utterances = read_token_shards(reference)
    assert [u.id for u in utterances] == [f"mini_000{i}" for i in range(1, 5)]
    first_line = (MINI / "metadata.csv").read_text().splitlines()[0].split("|")
    assert utterances[0].text == first_line[2]
    for utterance in utterances:
        waveform = load_audio(MINI / "wavs" / f"{utterance.id}.wav", 22050)
        assert utterance.duration == pytest.approx(len(waveform) / 22050, abs=1e-6)
        assert torch.equal(utterance.acoustic, codec.encode(waveform, 22050))
        assert torch.equal(utterance.semantic, semantic.encode(waveform, 22050))
        assert utterance.acoustic.dtype == utterance.semantic.dtype == torch.int16  # a quarter of int64's memory
        assert len(utterance.semantic) == (round(utterance.duration * 16000) - 400) // 320 + 1


def test_interrupted_run_resumes_to_the_same_files(reference, tmp_path, monkeypatch):
    write_shard = token_shards._write_shard
    calls = []

    def fail_on_second_shard(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return write_shard(*args, **kwargs)

    monkeypatch.setattr(token_shards, "_write_shard", fail_on_second_shard)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        tokenize(out)
    monkeypatch.setattr(token_shards, "_write_shard", write_shard)
    assert (out / "shard-00000.jsonl").is_file() and not (out / "shard-00001.jsonl").exists()
    with pytest.raises(FileNotFoundError, match="did not finish.*resume"):
        read_token_info(out)
    finished = (out / "shard-00000.safetensors").stat().st_mtime_ns

    codec = tiny_codec()
    encoded = []
    encode_batch = codec.encode_batch
    codec.encode_batch = lambda waveforms, rates: encoded.extend(waveforms) or encode_batch(waveforms, rates)
    tokenize(out, codec=codec)
    assert len(encoded) == 2  # shard 1 only
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == finished
    assert folder_bytes(out) == folder_bytes(reference)


def test_other_settings_are_refused(reference, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    with pytest.raises(ValueError, match="shard_size is 2 there but 3 now"):
        tokenize_corpus(SPEC, out, tiny_codec(), tiny_hubert(), shard_size=3, **KMEANS)
    codec = tiny_codec()
    codec.model.set_target_bandwidth(3.0)
    codec.bandwidth = 3.0
    with pytest.raises(ValueError, match="codec.bandwidth is 6.0 there but 3.0 now"):
        tokenize(out, codec=codec)
    with pytest.raises(ValueError, match="corpus.limit is 4 there but 3 now"):
        tokenize(out, spec={**SPEC, "limit": 3})
    with pytest.raises(ValueError, match="semantic.layer is 2 there but 1 now"):
        tokenize(out, semantic=tiny_hubert(layer=1))
    assert folder_bytes(out) == folder_bytes(reference)
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "shard-00000.jsonl").write_text("")
    with pytest.raises(ValueError, match="no tokens.json"):
        tokenize(stray)


@pytest.fixture
def corpus_with_bad_audio(tmp_path, make_wav) -> Path:
    """A manifest of three good mini clips (about 2 s), an empty file, a non-audio file, a 3 s clip and a
    3 s clip whose manifest says 0.5 s (only loading finds it too long)."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.wav").write_bytes(b"")
    (bad / "garbage.wav").write_bytes(b"this is not audio" * 10)
    make_wav(bad / "long.wav", 3.0)
    make_wav(bad / "lies.wav", 3.0)
    entries = [(MINI / "wavs" / "mini_0001.wav", None), (MINI / "wavs" / "mini_0002.wav", None),
               (bad / "empty.wav", None), (bad / "garbage.wav", None), (bad / "long.wav", None),
               (bad / "lies.wav", 0.5), (MINI / "wavs" / "mini_0003.wav", None)]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"audio_filepath": str(path), "text": "x", "duration": duration}) + "\n"
                                for path, duration in entries))
    return manifest


def test_bad_audio_is_skipped_recorded_and_resumed(corpus_with_bad_audio, tmp_path, caplog):
    spec = {"format": "manifest", "path": str(corpus_with_bad_audio)}
    out = tokenize(tmp_path / "tokens", spec=spec, max_duration=2.5)
    info = read_token_info(out)
    reasons = {entry["id"]: entry["reason"] for entry in info["skipped"]}
    assert list(reasons) == ["empty", "garbage", "long", "lies"]
    assert "file is empty" in reasons["empty"] and "cannot decode" in reasons["garbage"]
    assert reasons["long"] == "longer than 2.5 s (3.00 s)" and reasons["lies"].startswith("longer than 2.5 s (3.00 s")
    assert [u.id for u in read_token_shards(out)] == ["mini_0001", "mini_0002", "mini_0003"]
    assert [s["utterances"] for s in info["shards"]] == [2, 1]  # shard 1 was to hold lies and mini_0003
    assert any("failed to load" in r.message for r in caplog.records)

    tokens_json = (out / "tokens.json").read_bytes()
    tokenize(out, spec=spec, max_duration=2.5)  # every shard complete, the load-time skip included
    assert (out / "tokens.json").read_bytes() == tokens_json

    with pytest.raises(ValueError, match="empty.wav"):
        tokenize(tmp_path / "strict", spec=spec, strict=True, max_duration=2.5)


def test_corrupt_shards_are_named(reference, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    shard = out / "shard-00001.safetensors"
    with safe_open(str(shard), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(shard))
    tensors["acoustic_lengths"] = tensors["acoustic_lengths"] + 1
    save_file(tensors, str(shard), metadata=metadata)
    with pytest.raises(ValueError, match="shard-00001.safetensors: corrupt shard: acoustic_lengths"):
        read_token_shards(out)
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ValueError, match="shard-00001.safetensors: corrupt shard"):
        read_token_shards(out)
    (out / "shard-00000.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="shard-00000.jsonl is listed in .*tokens.json but missing"):
        token_shards._read_shard(out, {"name": "shard-00000", "utterances": 2}, read_token_info(out))
    with pytest.raises(FileNotFoundError, match="nowhere not found; run speechtrain-tokenize"):
        read_token_info(tmp_path / "nowhere")


def test_cli_warns_about_random_weights_and_writes_tokens(tmp_path, monkeypatch, capsys):
    from speechtrain.cli import tokenize as cli

    built = {}
    monkeypatch.setattr(cli, "EncodecCodec", lambda bandwidth, checkpoint: built.setdefault("codec", tiny_codec()))
    monkeypatch.setattr(cli, "HubertSemanticTokenizer",
                        lambda checkpoint, layer, kmeans, quantizer: built.setdefault("hubert", tiny_hubert(layer)))
    cli.main(["--corpus-format", "ljspeech", "--corpus-path", str(MINI), "--limit", "2", "--out",
              str(tmp_path / "cli"), "--hubert-layer", "1", "--clusters", "4", "--kmeans-utterances", "1",
              "--shard-size", "1", "--batch-size", "2", "--device", "cpu"])
    captured = capsys.readouterr()
    assert "RANDOM EnCodec weights" in captured.err and "RANDOM HuBERT weights" in captured.err
    assert "2 utterances in 2 shards, 0 skipped" in captured.out
    info = read_token_info(tmp_path / "cli")
    assert info["semantic"]["layer"] == 1 and info["semantic"]["num_clusters"] == 4 and info["shard_size"] == 1
    with pytest.raises(SystemExit, match="speechtrain-tokenize: error: .*nowhere"):
        cli.main(["--corpus-format", "ljspeech", "--corpus-path", str(tmp_path / "nowhere"), "--out",
                  str(tmp_path / "x"), "--hubert-layer", "1"])


def test_default_kmeans_fit_size_is_a_tenth_of_the_corpus_and_logged(tmp_path, caplog):
    fitted = {}
    for limit in (10, 30):
        with caplog.at_level("INFO", logger="speechtrain.data.token_shards"):
            out = tokenize(tmp_path / str(limit), {**SPEC, "limit": limit}, kmeans_utterances=None)
        (message,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fitting k-means")]
        caplog.clear()
        fitted[limit] = KMeans.load(out / "kmeans.safetensors").fit_frames
        assert f"on {fitted[limit]} frames" in message and f"of {limit // 10} of the {limit} utterances" in message
        assert "(10.0 %)" in message and "10 restarts" in message
    assert fitted[30] > 2 * fitted[10]  # three utterances instead of one


@pytest.fixture
def corpus_of_mixed_lengths(tmp_path, make_wav) -> Path:
    """Mini clips (22.05 kHz, about 2 s) around clips that test the batching's edges: 16 kHz clips too short for
    EnCodec to batch (50 ms) and for one HuBERT frame (20 ms), a 24 kHz clip of whole codec frames, a file that
    fails to load, and a clip longer than max_duration only once loaded."""
    clips = tmp_path / "clips"
    make_wav(clips / "short.wav", 0.05)
    make_wav(clips / "shorter.wav", 0.02)
    make_wav(clips / "frames.wav", 100 * 320 / 24000, sample_rate=24000, frequencies=(300.0,))
    make_wav(clips / "lies.wav", 3.0)
    (clips / "garbage.wav").write_bytes(b"this is not audio" * 10)
    entries = [(MINI / "wavs" / f"mini_000{i}.wav", None) for i in (1, 2, 3)]
    entries += [(clips / "short.wav", None), (clips / "lies.wav", 0.5), (clips / "frames.wav", None),
                (clips / "garbage.wav", None), (clips / "shorter.wav", None)]
    entries += [(MINI / "wavs" / f"mini_000{i}.wav", None) for i in (4, 5, 6)]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"audio_filepath": str(path), "text": "x", "duration": duration}) + "\n"
                                for path, duration in entries))
    return manifest


def test_batch_sizes_write_the_files_of_one_at_a_time_up_to_rounding(corpus_of_mixed_lengths, tmp_path):
    """Batches of 3 and 8, longest first inside a shard of 6, write what one utterance at a time writes: the same
    listings, k-means, lengths and skipped records, and the same ids but where float rounding in a batch flips one
    (`EncodecCodec.batch_embeddings`, `HubertSemanticTokenizer.features_batch`: none flips here, so the folders are
    byte-identical on this data). The same batch size writes the same bytes every time."""
    spec = {"format": "manifest", "path": str(corpus_of_mixed_lengths)}

    def run(name: str, size: int) -> Path:
        return tokenize(tmp_path / name, spec=spec, shard_size=6, max_duration=2.5, batch_size=size)

    one_at_a_time = folder_bytes(run("1", 1))
    for size in (3, 8):
        files = folder_bytes(run(str(size), size))
        assert sorted(files) == sorted(one_at_a_time)
        for name, content in files.items():
            if not name.endswith(".safetensors") or name == "kmeans.safetensors":
                assert content == one_at_a_time[name], name
                continue
            batched, alone = load_safetensors(content), load_safetensors(one_at_a_time[name])
            for key in ("acoustic_lengths", "semantic_lengths"):
                assert torch.equal(batched[key], alone[key])
            for key in ("acoustic", "semantic"):
                assert batched[key].dtype == alone[key].dtype == torch.int16
                assert (batched[key] != alone[key]).float().mean() <= 0.01, (name, key)
    assert folder_bytes(run("8 again", 8)) == folder_bytes(tmp_path / "8")
    utterances = read_token_shards(tmp_path / "8")
    assert [u.id for u in utterances] == ["mini_0001", "mini_0002", "mini_0003", "short", "frames", "shorter",
                                          "mini_0004", "mini_0005", "mini_0006"]  # corpus order, not batch order
    assert [len(u.acoustic) for u in utterances[3:6]] == [4, 100, 2] and len(utterances[5].semantic) == 1
    reasons = {entry["id"]: entry["reason"] for entry in read_token_info(tmp_path / "8")["skipped"]}
    assert list(reasons) == ["garbage", "lies"] and reasons["lies"].startswith("longer than 2.5 s")
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        tokenize(tmp_path / "none", spec=spec, batch_size=0)


def test_semantic_ids_are_int16_and_older_int32_shards_still_read(reference, tmp_path):
    assert token_shards.semantic_dtype(32768) == torch.int16 and token_shards.semantic_dtype(32769) == torch.int32
    with safe_open(str(reference / "shard-00000.safetensors"), "pt") as handle:
        assert handle.get_slice("semantic").get_dtype() == "I16"
    out = tmp_path / "older"
    shutil.copytree(reference, out)
    shard = out / "shard-00000.safetensors"
    with safe_open(str(shard), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(shard))
    save_file({**tensors, "semantic": tensors["semantic"].int()}, str(shard), metadata=metadata)  # as written before
    older, current = read_token_shards(out), read_token_shards(reference)
    assert [u.id for u in older] == [u.id for u in current]
    for old, new in zip(older, current):
        assert old.semantic.dtype == torch.int16 and torch.equal(old.semantic, new.semantic)
    save_file({**tensors, "semantic": tensors["semantic"].float()}, str(shard), metadata=metadata)
    with pytest.raises(ValueError, match="expected semantic as torch.int16 or torch.int32, got torch.float32"):
        read_token_shards(out)
    with pytest.raises(ValueError, match=r"acoustic ids in \[0, 40000\] do not fit the shards' torch.int16"):
        token_shards._narrowed(torch.tensor([0, 40000]), torch.int16, "acoustic")
