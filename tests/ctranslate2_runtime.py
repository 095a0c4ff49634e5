"""The CTranslate2 runtime (ctranslate2, faster-whisper), run in a child process.

ctranslate2 ships its own OpenMP runtime (`ctranslate2.libs/libgomp-*.so`) and sets torch's OpenMP thread count when a
model loads. Once its thread pool has run in a process and torch has computed there too, later CPU training in that
process no longer matches a fresh process bit for bit (tests/test_resume.py's exact-resume comparisons failed after
tests/models/test_whisper_ctranslate2.py in the same pytest-xdist worker), so the tests keep it out of theirs.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def run_ctranslate2_whisper(folder: Path, features: np.ndarray | None = None, *, encode: bool = False,
                            generate: dict | None = None,
                            transcribe: tuple[list[np.ndarray], dict] | None = None) -> dict[str, Any]:
    """In a fresh process, the CTranslate2 Whisper at `folder` on log-mel `features` [B, n_mels, frames]:
    `encoded` (the encoder's output, with `encode`), `sequences` (the first hypothesis of each row of
    `Whisper.generate(features, **generate)`), and `texts` (faster-whisper's `transcribe(audio, **kwargs)` of each
    16 kHz clip in `transcribe`, its segments joined). With `transcribe`, the model is faster-whisper's own (its
    `WhisperModel.model`), so that all three come from one loaded model."""
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        request: dict[str, Any] = {"folder": str(folder), "encode": encode, "generate": generate}
        if features is not None:
            np.save(scratch / "features.npy", features)
        if transcribe is not None:
            clips, request["transcribe"] = transcribe
            np.savez(scratch / "clips.npz", *clips)
        (scratch / "request.json").write_text(json.dumps(request))
        result = subprocess.run([sys.executable, __file__, str(scratch)], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        answer = json.loads((scratch / "answer.json").read_text())
        if encode:
            answer["encoded"] = np.load(scratch / "encoded.npy")
        return answer


def _answer(scratch: Path) -> None:
    import ctranslate2

    request = json.loads((scratch / "request.json").read_text())
    answer: dict[str, Any] = {}
    if "transcribe" in request:
        import faster_whisper

        pipeline = faster_whisper.WhisperModel(request["folder"], device="cpu", compute_type="float32")
        runtime = pipeline.model
    else:
        runtime = ctranslate2.models.Whisper(request["folder"], device="cpu", compute_type="float32")
    if request["encode"] or request["generate"] is not None:
        features = ctranslate2.StorageView.from_array(np.load(scratch / "features.npy"))
        if request["encode"]:
            np.save(scratch / "encoded.npy", np.array(runtime.encode(features)))
        if request["generate"] is not None:
            results = runtime.generate(features, **request["generate"])
            answer["sequences"] = [result.sequences_ids[0] for result in results]
    if "transcribe" in request:
        with np.load(scratch / "clips.npz") as clips:
            answer["texts"] = [" ".join(segment.text.strip()
                                        for segment in pipeline.transcribe(clips[name], **request["transcribe"])[0])
                               for name in clips.files]
    (scratch / "answer.json").write_text(json.dumps(answer))


if __name__ == "__main__":
    _answer(Path(sys.argv[1]))
