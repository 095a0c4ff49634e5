"""Loggers of a tiny VITS run: TensorBoard events, an offline W&B run folder and the CSV hold metrics, audio and
the validation pictures (alignment, real and generated mels, durations), which the run folder has as PNG files."""

import csv
import io
import struct
from pathlib import Path

import hydra
import numpy as np
import pytest
import soundfile
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import AUDIO, IMAGES, SCALARS, EventAccumulator

from speechtrain.train import train

SHORT = ["recipe=vits_mini", "data.max_batch_seconds=3", "data.max_duration=3", "trainer.max_epochs=1",
         "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=2", "trainer.check_val_every_n_epoch=1",
         "trainer.log_every_n_steps=1", "task.validation_sentences=[Hi there.,A cat.]", "export=false",
         "logger=[tensorboard,wandb,csv]", "logger.wandb.name=test"]
SAMPLE_RATE, HOP_LENGTH, MEL_BINS = 22050, 256, 80  # conf/audio/vits_22k.yaml
SENTENCES = ["sentence_0", "sentence_1"]
PICTURES = ["alignment", "reference_mel", "generated_mel", "durations"]  # of each drawn validation utterance


@pytest.fixture(scope="module")
def logged_run(compose, tmp_path_factory):
    pytest.importorskip("wandb")
    out = tmp_path_factory.mktemp("logged")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        env.setenv("WANDB_SILENT", "true")
        env.setenv("WANDB_DIR", str(out))
        cfg = compose(*SHORT, output_dir=out)
        train(cfg)  # finishes the W&B run, which flushes the offline run file
    return out, cfg


@pytest.fixture(scope="module")
def run_dir(logged_run):
    return logged_run[0]


@pytest.fixture(scope="module")
def token_counts(logged_run) -> dict[str, int]:
    """Tokens of each bundled mini-corpus utterance, as the run's tokenizer encodes its text."""
    cfg = logged_run[1]
    tokenizer = hydra.utils.instantiate(cfg.tokenizer)
    with open(Path(cfg.data.train.path) / "metadata.csv", newline="") as file:
        return {row[0]: len(tokenizer.encode(row[-1])) for row in csv.reader(file, delimiter="|")}


def step_dir(run_dir):
    (folder,) = (run_dir / "samples").iterdir()
    return folder


def drawn_utterances(run_dir) -> list[str]:
    """Ids of the validation utterances the task drew, from the PNG files beside the wav samples."""
    return sorted(path.name.removesuffix("_alignment.png") for path in step_dir(run_dir).glob("*_alignment.png"))


def sample_frames(run_dir) -> dict[str, int]:
    """Frames of each validation sample from the wav files the task writes beside the loggers."""
    names = SENTENCES + [f"{u}_{kind}" for u in drawn_utterances(run_dir) for kind in ("reference", "generated")]
    return {name: soundfile.info(step_dir(run_dir) / f"{name}.wav").frames for name in names}


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def expected_shapes(run_dir, token_counts, utterance: str) -> dict[str, tuple[int, int, int]]:
    frames = {name: count // HOP_LENGTH for name, count in sample_frames(run_dir).items()}
    return {"alignment": (token_counts[utterance], frames[f"{utterance}_reference"], 3),
            "reference_mel": (MEL_BINS, frames[f"{utterance}_reference"], 3),
            "generated_mel": (MEL_BINS, frames[f"{utterance}_generated"], 3),
            "durations": (320, 640, 3)}


def assert_alignment_is_monotonic(image: np.ndarray) -> None:
    """The alignment search's hard alignment, drawn (token 0 in the bottom row): exactly one bright cell in each
    frame column, and the bright token never goes back and never skips one, from the first token to the last."""
    from matplotlib import colormaps

    bright = (image == np.array(colormaps["viridis"](1.0, bytes=True)[:3])).all(axis=-1)  # [tokens, frames]
    assert (bright.sum(axis=0) == 1).all(), bright.sum(axis=0)
    tokens = image.shape[0] - 1 - bright.argmax(axis=0)  # [frames]: the token each frame is aligned to
    assert tokens[0] == 0 and tokens[-1] == image.shape[0] - 1 and set(np.diff(tokens)) <= {0, 1}, tokens


def test_tensorboard_events_hold_the_audio_samples_and_scalars(run_dir):
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={AUDIO: 0, SCALARS: 0})
    events.Reload()
    assert sorted(events.Tags()["audio"]) == sorted(f"val/samples/{name}" for name in sample_frames(run_dir))
    for name, frames in sample_frames(run_dir).items():
        (audio,) = events.Audio(f"val/samples/{name}")
        assert audio.sample_rate == SAMPLE_RATE and audio.length_frames == frames > 0
        assert audio.content_type == "audio/wav"
    scalars = set(events.Tags()["scalars"])
    assert {"train/mel_l1", "val/loss", "throughput/samples_per_s", "throughput/audio_s_per_s",
            "lr-AdamW"} <= scalars, scalars
    assert "throughput/tokens_per_s" not in scalars  # TTS batches have no labels


def test_tensorboard_events_and_png_files_hold_the_validation_pictures(run_dir, token_counts):
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={IMAGES: 0})
    events.Reload()
    utterances = drawn_utterances(run_dir)
    assert len(utterances) == 2  # task.num_logged_utterances, from the two validation batches of one item
    assert sorted(events.Tags()["images"]) == sorted(f"val/images/{u}_{kind}" for u in utterances for kind in PICTURES)
    for utterance in utterances:
        shapes = expected_shapes(run_dir, token_counts, utterance)
        for kind in PICTURES:
            (event,) = events.Images(f"val/images/{utterance}_{kind}")
            image = decode_png(event.encoded_image_string)
            assert image.shape == shapes[kind] and (event.height, event.width) == shapes[kind][:2], kind
            assert len(np.unique(image.reshape(-1, 3), axis=0)) > 1, f"{utterance}_{kind} is one colour"
            png = decode_png((step_dir(run_dir) / f"{utterance}_{kind}.png").read_bytes())
            assert np.array_equal(png, image), kind  # the file beside the wav samples is the logged picture
        alignment = decode_png(events.Images(f"val/images/{utterance}_alignment")[0].encoded_image_string)
        assert_alignment_is_monotonic(alignment)


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


def test_wandb_offline_run_folder_has_the_metrics_audio_and_pictures(run_dir, token_counts):
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
    for name in frames:
        (row,) = [row for row in history if f"val/samples/{name}/path" in row]
        assert row[f"val/samples/{name}/_type"] == '"audio-file"'
        media = run_folder / "files" / row[f"val/samples/{name}/path"].strip('"')
        info = soundfile.info(media)
        assert info.samplerate == SAMPLE_RATE and info.frames == frames[name]

    utterances = drawn_utterances(run_dir)
    for utterance in utterances:
        shapes = expected_shapes(run_dir, token_counts, utterance)
        for kind in PICTURES:
            key = f"val/images/{utterance}_{kind}"
            (row,) = [row for row in history if f"{key}/path" in row]
            assert row[f"{key}/_type"] == '"image-file"'
            image = decode_png((run_folder / "files" / row[f"{key}/path"].strip('"')).read_bytes())
            assert image.shape == shapes[kind] and (int(row[f"{key}/height"]), int(row[f"{key}/width"])) == shapes[
                kind][:2], kind
            assert np.array_equal(image, decode_png((step_dir(run_dir) / f"{utterance}_{kind}.png").read_bytes()))


def test_csv_has_throughput_and_learning_rate_columns(run_dir):
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"throughput/samples_per_s", "throughput/audio_s_per_s", "lr-AdamW", "train/mel_l1"} <= set(header)
