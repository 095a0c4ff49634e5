"""Loggers of a tiny VITS run: TensorBoard events, an offline W&B run folder and the CSV hold metrics and audio."""

import struct

import pytest
import soundfile
from tensorboard.backend.event_processing.event_accumulator import AUDIO, SCALARS, EventAccumulator

from speechtrain.train import train

SHORT = ["recipe=vits_mini", "data.max_batch_seconds=3", "data.max_duration=3", "trainer.max_epochs=1",
         "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1", "trainer.check_val_every_n_epoch=1",
         "trainer.log_every_n_steps=1", "task.validation_sentences=[Hi there.,A cat.]", "export=false",
         "logger=[tensorboard,wandb,csv]", "logger.wandb.name=test"]
SAMPLE_RATE = 22050  # conf/audio/vits_22k.yaml
SENTENCES = ["sentence_0", "sentence_1"]


@pytest.fixture(scope="module")
def run_dir(compose, tmp_path_factory):
    pytest.importorskip("wandb")
    out = tmp_path_factory.mktemp("logged")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        env.setenv("WANDB_SILENT", "true")
        env.setenv("WANDB_DIR", str(out))
        train(compose(*SHORT, output_dir=out))  # finishes the W&B run, which flushes the offline run file
    return out


def sample_frames(run_dir) -> dict[str, int]:
    """Frames of each validation sample from the wav files the task writes beside the loggers."""
    (step_dir,) = (run_dir / "samples").iterdir()
    return {name: soundfile.info(step_dir / f"{name}.wav").frames for name in SENTENCES}


def test_tensorboard_events_hold_the_audio_samples_and_scalars(run_dir):
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={AUDIO: 0, SCALARS: 0})
    events.Reload()
    assert sorted(events.Tags()["audio"]) == [f"val/samples/{name}" for name in SENTENCES]
    for name, frames in sample_frames(run_dir).items():
        (audio,) = events.Audio(f"val/samples/{name}")
        assert audio.sample_rate == SAMPLE_RATE and audio.length_frames == frames > 0
        assert audio.content_type == "audio/wav"
    scalars = set(events.Tags()["scalars"])
    assert {"train/mel_l1", "val/loss", "throughput/samples_per_s", "throughput/audio_s_per_s",
            "lr-AdamW"} <= scalars, scalars
    assert "throughput/tokens_per_s" not in scalars  # TTS batches have no labels


def wandb_records(path):
    """Record payloads of a .wandb file: W&B's LevelDB-style log (7-byte header, 32 KiB blocks of
    checksum/length/type chunks; type 1 = whole record, 2/3/4 = first/middle/last piece)."""
    data, block, position, pieces = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B", path
    while position + 7 <= len(data):
        if block - position % block < 7:  # too little room for a chunk header: the block is padded
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        pieces += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            yield pieces
            pieces = b""


def test_wandb_offline_run_folder_has_the_metrics_and_audio(run_dir):
    from wandb.proto import wandb_internal_pb2

    (run_folder,) = (run_dir / "wandb").glob("offline-run-*")
    (run_file,) = run_folder.glob("run-*.wandb")
    history = []
    for payload in wandb_records(run_file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "history":
            history.append({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
    logged = {key for row in history for key in row}
    assert {"train/mel_l1", "val/loss", "throughput/audio_s_per_s", "lr-AdamW", "trainer/global_step"} <= logged
    assert all(float(row["train/mel_l1"]) > 0 for row in history if "train/mel_l1" in row)

    frames = sample_frames(run_dir)
    for name in SENTENCES:
        (row,) = [row for row in history if f"val/samples/{name}/path" in row]
        assert row[f"val/samples/{name}/_type"] == '"audio-file"'
        media = run_folder / "files" / row[f"val/samples/{name}/path"].strip('"')
        info = soundfile.info(media)
        assert info.samplerate == SAMPLE_RATE and info.frames == frames[name]


def test_csv_has_throughput_and_learning_rate_columns(run_dir):
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"throughput/samples_per_s", "throughput/audio_s_per_s", "lr-AdamW", "train/mel_l1"} <= set(header)
