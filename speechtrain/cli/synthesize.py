"""`speechtrain-synthesize MODEL_DIR "text" -o out.wav`: text to speech with a Hugging Face-format VITS.

The folder is what `python train.py recipe=vits_*` exports (or any transformers VITS folder, e.g. MMS).
Several texts give several files (`out.wav`, `out_1.wav`, ...); `--text-file` reads one text per line.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import soundfile
import torch

from speechtrain.errors import CheckpointError, ConfigError
from speechtrain.hub import load_bundle, read_model_type


class Synthesizer:
    """A loaded text-to-speech folder (a VITS: text ids to a waveform in one call) and its tokenizer, read once for
    many texts."""

    def __init__(self, model_dir: str | Path, device: str = "cpu"):
        self.model, self.tokenizer, _ = load_bundle(model_dir)
        self.sampling_rate = getattr(self.model.config, "sampling_rate", None)
        if self.sampling_rate is None or self.tokenizer is None:
            raise CheckpointError(f"{model_dir}: a {read_model_type(model_dir)!r} model does not turn text into speech "
                                  "in one call; give a VITS folder (Bark speaks with speechtrain-bark-generate)")
        self.model.to(device).eval()
        self.device = device

    def encode(self, text: str) -> list[int]:
        """The model's input ids of `text`; a ConfigError when none of its symbols is in the vocabulary."""
        ids = self.tokenizer.encode(text)
        if all(i == self.tokenizer.pad_id for i in ids):  # unknown characters dropped: blanks alone are left
            raise ConfigError(f"nothing to say in {text!r}: no symbol of it is in the model's vocabulary")
        return ids

    @torch.no_grad()
    def speak(
        self,
        texts: Sequence[str],
        speaking_rate: float = 1.0,
        noise_scale: float | None = None,
        noise_scale_duration: float | None = None,
        speaker_id: int | None = None,
        seed: int = 0,
    ) -> Iterator[torch.Tensor]:
        """One 1-D waveform per text, made as it is asked for (a long list need not fit in memory); the same seed
        gives the same audio. Every text is checked before the first is spoken."""
        if speaking_rate <= 0:
            raise ConfigError(f"speaking_rate must be positive, got {speaking_rate}")
        encoded = [self.encode(text) for text in texts]
        generator = torch.Generator().manual_seed(seed)
        for ids in encoded:
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            waveform, lengths = self.model(torch.tensor([ids], device=self.device), speaker_id=speaker_id,
                                           noise_scale=noise_scale, noise_scale_duration=noise_scale_duration,
                                           length_scale=1.0 / speaking_rate)
            yield waveform[0, : int(lengths[0])].cpu()


def synthesize(model_dir: str | Path, texts: list[str], device: str = "cpu",
               **options: Any) -> tuple[list[torch.Tensor], int]:
    """One 1-D waveform per text and the sampling rate; `options` are `Synthesizer.speak`'s (speaking_rate, noise
    scales, speaker_id, seed: the same seed gives the same audio)."""
    synthesizer = Synthesizer(model_dir, device)
    return list(synthesizer.speak(texts, **options)), synthesizer.sampling_rate


def write_wav(path: str | Path, waveform: torch.Tensor, sample_rate: int) -> None:
    """16-bit PCM, clipped to [-1, 1]: the speech files of speechtrain-synthesize and speechtrain-evaluate."""
    soundfile.write(path, waveform.clamp(-1, 1).numpy(), sample_rate, subtype="PCM_16")


def output_paths(out: Path, count: int) -> list[Path]:
    return [out if i == 0 else out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(count)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="a Hugging Face-format VITS folder (e.g. outputs/.../exported)")
    parser.add_argument("texts", nargs="*", help="texts to speak")
    parser.add_argument("--text-file", type=Path, help="one text per line")
    parser.add_argument("-o", "--out", type=Path, default=Path("speech.wav"))
    parser.add_argument("--speaking-rate", type=float, default=1.0, help="> 1 faster, < 1 slower")
    parser.add_argument("--noise-scale", type=float, default=None, help="latent noise (model default 0.667)")
    parser.add_argument("--noise-scale-duration", type=float, default=None, help="duration noise (default 0.8)")
    parser.add_argument("--speaker-id", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    texts = list(args.texts)
    if args.text_file:
        texts += [line.strip() for line in args.text_file.read_text().splitlines() if line.strip()]
    if not texts:
        parser.error("give texts or --text-file")
    try:
        waveforms, sample_rate = synthesize(
            args.model_dir, texts, args.device, speaking_rate=args.speaking_rate, noise_scale=args.noise_scale,
            noise_scale_duration=args.noise_scale_duration, speaker_id=args.speaker_id, seed=args.seed)
    except (FileNotFoundError, ValueError) as exc:
        parser.exit(1, f"speechtrain-synthesize: error: {exc}\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for path, waveform in zip(output_paths(args.out, len(waveforms)), waveforms):
        write_wav(path, waveform, sample_rate)
        print(f"{path}\t{len(waveform) / sample_rate:.2f} s")


if __name__ == "__main__":
    main()
