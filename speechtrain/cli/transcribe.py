"""`speechtrain-transcribe MODEL_DIR AUDIO...`: transcribe audio files with a Hugging Face-format model.

Audio longer than the model's window (30 s for Whisper) is transcribed window by window, each window starting where
the timestamps of the last one say its last complete sentence ended (openai/whisper's long-form loop), so no
sentence is cut or heard twice; a vocabulary without timestamp tokens falls back to consecutive windows. With
`--timestamps` each file's timed segments are printed, `--srt DIR` / `--vtt DIR` write subtitles. Any format
soundfile reads works, at any sample rate.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from speechtrain.data.audio import AudioError, load_audio
from speechtrain.decoding import decode_to_text, greedy_decode
from speechtrain.errors import CheckpointError
from speechtrain.hub import load_bundle
from speechtrain.long_form import Segment, srt, transcribe_long, vtt


class Transcriber:
    """A loaded model, tokenizer and feature extractor, ready to turn waveforms into text."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", num_beams: int = 1, language: str | None = None,
                 prompt: str | None = None):
        """`prompt`: text the decoder is conditioned on (Whisper's `<|startofprev|>`: spellings, names, style)."""
        tokenizer_kwargs = {"language": language} if language else {}
        self.model, self.tokenizer, self.features = load_bundle(model_dir, tokenizer_kwargs=tokenizer_kwargs)
        self.model.to(device).eval()
        self.device, self.num_beams = device, num_beams
        vocab_size = self.model.config.vocab_size
        if len(self.tokenizer) > vocab_size or max(self.tokenizer.prefix_ids + [self.tokenizer.eos_id]) >= vocab_size:
            raise CheckpointError(
                f"{model_dir}: the tokenizer has {len(self.tokenizer)} tokens but the model's vocab_size is "
                f"{vocab_size}: they belong to different models (copy the tokenizer files of the model's own folder)"
            )
        if prompt and not hasattr(self.tokenizer, "prompt_ids"):
            raise CheckpointError(f"{model_dir}: {type(self.tokenizer).__name__} cannot condition on a prompt")
        self.prompt_ids = self.tokenizer.prompt_ids(prompt) if prompt else []
        self.prefix_ids = self.prompt_ids + list(self.tokenizer.prefix_ids)
        self.model_dir = model_dir

    @property
    def has_timestamps(self) -> bool:
        """Whether the vocabulary has timestamp tokens (OpenAI Whisper checkpoints do)."""
        try:
            return self.tokenizer.timestamp_begin is not None
        except (AttributeError, ValueError):
            return False

    @torch.no_grad()
    def transcribe_segments(self, waveform: torch.Tensor) -> list[Segment]:
        """Timed segments of a waveform of any length (greedy, under the tokenizer's timestamp rules)."""
        if not self.has_timestamps:
            raise CheckpointError(f"{self.model_dir}: its vocabulary has no timestamp tokens")
        if self.num_beams > 1:
            raise ValueError("timestamps are decoded greedily; use --beams 1")
        prefix = self.prompt_ids + self.tokenizer.timestamp_prefix_ids
        rules = self.tokenizer.timestamp_rules(len(prefix))

        def decode_window(samples: torch.Tensor) -> list[int]:
            features, frame_mask = self.features([samples])
            [ids] = greedy_decode(self.model, features.to(self.device), frame_mask.to(self.device), prefix,
                                  self.tokenizer.eos_id, self.model.config.max_target_positions - len(prefix),
                                  self.tokenizer.suppress_tokens, self.tokenizer.begin_suppress_tokens, rules)
            return ids[len(prefix) :]

        return transcribe_long(decode_window, self.tokenizer, waveform, self.features.sampling_rate,
                               self.window_samples / self.features.sampling_rate)

    @property
    def window_samples(self) -> int | None:
        """Samples per window, or None for models without a fixed window (Speech2Text takes any length)."""
        chunk_length = getattr(self.features, "chunk_length", None)
        return None if chunk_length is None else int(chunk_length * self.features.sampling_rate)

    @torch.no_grad()
    def transcribe_waveforms(self, waveforms: Sequence[torch.Tensor]) -> list[str]:
        """One transcript per waveform (1-D, at the feature extractor's sampling rate); long ones by their
        timestamps where the vocabulary has them."""
        windows, owners, long_form = [], [], {}
        for index, waveform in enumerate(waveforms):
            window = self.window_samples or max(len(waveform), 1)
            if len(waveform) > window and self.has_timestamps and self.num_beams == 1:
                long_form[index] = " ".join(segment.text for segment in self.transcribe_segments(waveform))
                continue
            for start in range(0, max(len(waveform), 1), window):
                windows.append(waveform[start : start + window])
                owners.append(index)
        texts = [[long_form[index]] if index in long_form else [] for index in range(len(waveforms))]
        if windows:
            features, frame_mask = self.features(windows)
            decoded = decode_to_text(self.model, self.tokenizer, features.to(self.device),
                                     frame_mask.to(self.device), self.num_beams, prefix_ids=self.prefix_ids)
            for owner, text in zip(owners, decoded):
                texts[owner].append(text)
        return [" ".join(t for t in parts if t) for parts in texts]

    def transcribe_files(self, paths: Sequence[str | Path]) -> list[str]:
        return self.transcribe_waveforms([load_audio(p, self.features.sampling_rate) for p in paths])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="a Hugging Face-format folder (e.g. outputs/.../exported)")
    parser.add_argument("audio", nargs="+", help="audio files to transcribe")
    parser.add_argument("--beams", type=int, default=1, help="beam size (1 = greedy)")
    parser.add_argument("--language", default=None, help="language token for multilingual models, e.g. en, de")
    parser.add_argument("--prompt", default=None,
                        help="text to condition on (Whisper's <|startofprev|>): names, spellings, a previous line")
    parser.add_argument("--timestamps", action="store_true", help="print each file's timed segments")
    parser.add_argument("--srt", type=Path, default=None, metavar="DIR", help="write DIR/<audio name>.srt subtitles")
    parser.add_argument("--vtt", type=Path, default=None, metavar="DIR", help="write DIR/<audio name>.vtt subtitles")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    try:
        transcriber = Transcriber(args.model_dir, args.device, args.beams, args.language, args.prompt)
    except (FileNotFoundError, ValueError) as exc:
        parser.exit(1, f"speechtrain-transcribe: error: {exc}\n")
    if args.timestamps or args.srt or args.vtt:
        sys.exit(_transcribe_timed(transcriber, args))
    failed = 0
    for start in range(0, len(args.audio), args.batch_size):
        paths = args.audio[start : start + args.batch_size]
        try:
            texts = transcriber.transcribe_files(paths)
        except AudioError:  # find which file failed, transcribe the rest
            texts = []
            for path in paths:
                try:
                    texts += transcriber.transcribe_files([path])
                except AudioError as exc:
                    print(f"speechtrain-transcribe: skipped: {exc}", file=sys.stderr)
                    texts.append(None)
        for path, text in zip(paths, texts):
            if text is None:
                failed += 1
            else:
                print(f"{path}\t{text}")
    sys.exit(1 if failed else 0)


def _transcribe_timed(transcriber: Transcriber, args: argparse.Namespace) -> int:
    """Segments of each file, printed and/or written as subtitles; the exit status (1 if a file failed)."""
    failed = 0
    for path in args.audio:
        try:
            segments = transcriber.transcribe_segments(load_audio(path, transcriber.features.sampling_rate))
        except (AudioError, CheckpointError, ValueError) as exc:
            print(f"speechtrain-transcribe: skipped: {exc}", file=sys.stderr)
            failed += 1
            continue
        if args.timestamps:
            for segment in segments:
                print(f"{path}\t[{segment.start:.2f} --> {segment.end:.2f}]\t{segment.text}")
        for folder, writer, suffix in ((args.srt, srt, ".srt"), (args.vtt, vtt, ".vtt")):
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / Path(path).with_suffix(suffix).name).write_text(writer(segments), encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    main()
