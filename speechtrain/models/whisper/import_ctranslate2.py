"""`speechtrain-import-ctranslate2 CT2_DIR OUT_DIR`: a faster-whisper (CTranslate2) Whisper folder to Hugging Face
format, so that speechtrain fine-tunes it (`model.pretrained=OUT_DIR`) and transformers loads it.

The folder gets config.json, model.safetensors (float32), the tokenizer files (with the timestamp tokens
`<|0.00|>` ... `<|30.00|>` that transformers' tokenizers hold), generation_config.json (prompt
ids, suppressed tokens, alignment heads and languages from CTranslate2's config.json) and Whisper's
preprocessor_config.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenizers import AddedToken, Tokenizer

from speechtrain.importing import run_import_command, write_imported_folder
from speechtrain.models.whisper.ctranslate2 import TOKENIZER_NAME, load_ctranslate2_whisper
from speechtrain.models.whisper.features import WhisperFeatureExtractor
from speechtrain.models.whisper.tokenizer import WhisperTokenizer

SAMPLING_RATE, HOP_LENGTH = 16000, 160


def _add_timestamp_tokens(tokenizer: Tokenizer, timestamp_begin: int, vocab_size: int) -> None:
    """faster-whisper's tokenizer.json stops at `<|notimestamps|>`; the model's 1501 ids after it are the timestamps
    `<|0.00|>` ... `<|30.00|>`, which transformers' Whisper tokenizers hold as added tokens: add them, so that text
    with timestamps tokenises (and decodes) as in transformers."""
    count = vocab_size - timestamp_begin
    if tokenizer.get_vocab_size(with_added_tokens=True) == timestamp_begin and count == 1501:
        tokenizer.add_tokens([AddedToken(f"<|{index * 0.02:.2f}|>", normalized=False) for index in range(count)])


def import_ctranslate2(ct2_dir: str | Path, out_dir: str | Path) -> Path:
    """Writes the Hugging Face-format folder of the CTranslate2 Whisper in `ct2_dir` into `out_dir`."""
    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    model, generation_config = load_ctranslate2_whisper(ct2_dir)
    raw = Tokenizer.from_file(str(ct2_dir / TOKENIZER_NAME))
    _add_timestamp_tokens(raw, generation_config["no_timestamps_token_id"] + 1, model.config.vocab_size)
    tokenizer = WhisperTokenizer(raw, generation_config)
    config = model.config
    # the encoder sees 2 * max_source_positions frames of HOP_LENGTH samples: 30 s for every released Whisper
    chunk_length = config.max_source_positions * 2 * HOP_LENGTH // SAMPLING_RATE
    features = WhisperFeatureExtractor(feature_size=config.num_mel_bins, sampling_rate=SAMPLING_RATE,
                                       hop_length=HOP_LENGTH, chunk_length=chunk_length)
    return write_imported_folder(out_dir, f"the CTranslate2 folder `{ct2_dir}` (speechtrain-import-ctranslate2)",
                                 model, tokenizer, features)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ct2_dir", help="a CTranslate2 Whisper folder (model.bin, config.json, tokenizer.json)")
    parser.add_argument("out_dir", help="the Hugging Face-format folder to write")
    run_import_command("speechtrain-import-ctranslate2", parser, argv,
                       lambda args: import_ctranslate2(args.ct2_dir, args.out_dir), "ct2_dir")


if __name__ == "__main__":
    main()
