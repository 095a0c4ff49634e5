"""CTranslate2 Whisper folders (what faster-whisper runs) back into Hugging Face format, and exports into them.

A CTranslate2 folder holds `model.bin` (every weight under CTranslate2's own names, attention projections fused,
optionally quantized), `config.json` (suppressed tokens, alignment heads, language ids) and the tokenizer's
`tokenizer.json`. `model.bin` is read directly (its layout is `ctranslate2.specs.model_spec.ModelSpec._serialize`:
a version, the spec name, a revision, then per variable its name, shape, type and bytes, then aliases), so neither
ctranslate2 nor faster-whisper is needed to import. Quantized weights (int8, int16) are dequantized with their
scales; float16 and bfloat16 weights become float32.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any

import torch

from speechtrain.errors import CheckpointError, DependencyError
from speechtrain.models.whisper.config import WhisperConfig
from speechtrain.models.whisper.modeling import WhisperForConditionalGeneration

MODEL_NAME, CONFIG_NAME, TOKENIZER_NAME = "model.bin", "config.json", "tokenizer.json"
# The DataType enum of ctranslate2/types.h, in order.
DTYPES = (torch.float32, torch.int8, torch.int16, torch.int32, torch.float16, torch.bfloat16)
# ctranslate2's ActivationType enum values for the activations Whisper checkpoints use.
ACTIVATIONS = {0: "relu", 1: "gelu_pytorch_tanh", 2: "silu", 3: "gelu"}
WHISPER_SPEC = "WhisperSpec"


class _Reader:
    """Sequential little-endian reads over the bytes of a model.bin."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.position, self.path = data, 0, path

    def unpack(self, fmt: str) -> int:
        try:
            (value,) = struct.unpack_from("<" + fmt, self.data, self.position)
        except struct.error as err:
            raise CheckpointError(f"{self.path}: truncated at byte {self.position}") from err
        self.position += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.unpack("H")  # counts the trailing NUL
        text = self.data[self.position : self.position + length - 1].decode("utf-8")
        self.position += length
        return text

    def take(self, size: int) -> bytes:
        chunk = self.data[self.position : self.position + size]
        if len(chunk) != size:
            raise CheckpointError(f"{self.path}: truncated at byte {self.position}")
        self.position += size
        return chunk


def read_model_bin(path: str | Path) -> tuple[str, dict[str, torch.Tensor]]:
    """(spec name, variables) of a CTranslate2 `model.bin`; aliases (tied weights) point at the same tensor."""
    path = Path(path)
    reader = _Reader(path.read_bytes(), path)
    version = reader.unpack("I")
    if version < 5:
        raise CheckpointError(f"{path}: CTranslate2 binary version {version}; re-convert with ctranslate2 >= 3")
    spec_name = reader.string()
    reader.unpack("I")  # the spec's revision
    variables: dict[str, torch.Tensor] = {}
    for _ in range(reader.unpack("I")):
        name = reader.string()
        shape = [reader.unpack("I") for _ in range(reader.unpack("B"))]
        dtype = DTYPES[reader.unpack("B")]
        raw = reader.take(reader.unpack("I"))
        variables[name] = torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)
    for _ in range(reader.unpack("I")):
        alias, target = reader.string(), reader.string()
        variables[alias] = variables[target]
    return spec_name, variables


def _float(variables: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """A weight as float32, dequantized when CTranslate2 stored it as integers with a per-row `_scale`."""
    weight = variables[name]
    scale = variables.get(f"{name}_scale")
    if scale is not None and not weight.is_floating_point():
        # [rows, columns] / [rows] -> [rows, columns]
        return weight.float() / scale.float().reshape(-1, *([1] * (weight.dim() - 1)))
    return weight.float()


def _count_layers(variables: dict[str, torch.Tensor], stack: str) -> int:
    """How many `stack/layer_N/...` blocks there are (not counting `stack/layer_norm`)."""
    pattern = re.compile(rf"{stack}/layer_(\d+)/")
    return len({match.group(1) for name in variables if (match := pattern.match(name))})


def _split_rows(tensor: torch.Tensor, parts: int) -> list[torch.Tensor]:
    """A fused projection [parts * d, ...] -> `parts` tensors [d, ...] (query, key, value order)."""
    return list(tensor.chunk(parts, dim=0))


def _attention(variables: dict, ct2: str, hf: str, fused: str, parts: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """One attention block's projections: the fused `linear_0` (or `linear_1` for cross-attention's key and
    value) is split into transformers' q/k/v projections; Whisper's key projection has no bias (zeros in ct2)."""
    weights = _split_rows(_float(variables, f"{ct2}/{fused}/weight"), len(parts))
    biases = _split_rows(_float(variables, f"{ct2}/{fused}/bias"), len(parts))
    out = {}
    for part, weight, bias in zip(parts, weights, biases, strict=True):
        out[f"{hf}.{part}_proj.weight"] = weight
        if part != "k":
            out[f"{hf}.{part}_proj.bias"] = bias
    return out


def _linear(variables: dict, ct2: str, hf: str) -> dict[str, torch.Tensor]:
    return {f"{hf}.weight": _float(variables, f"{ct2}/weight"), f"{hf}.bias": _float(variables, f"{ct2}/bias")}


def _layer_norm(variables: dict, ct2: str, hf: str) -> dict[str, torch.Tensor]:
    return {f"{hf}.weight": _float(variables, f"{ct2}/gamma"), f"{hf}.bias": _float(variables, f"{ct2}/beta")}


def state_dict_from_ctranslate2(variables: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' `WhisperForConditionalGeneration` names for CTranslate2's Whisper variables."""
    state = {
        "model.encoder.conv1.weight": _float(variables, "encoder/conv1/weight"),
        "model.encoder.conv1.bias": _float(variables, "encoder/conv1/bias"),
        "model.encoder.conv2.weight": _float(variables, "encoder/conv2/weight"),
        "model.encoder.conv2.bias": _float(variables, "encoder/conv2/bias"),
        "model.encoder.embed_positions.weight": _float(variables, "encoder/position_encodings/encodings"),
        "model.decoder.embed_tokens.weight": _float(variables, "decoder/embeddings/weight"),
        "model.decoder.embed_positions.weight": _float(variables, "decoder/position_encodings/encodings"),
        **_layer_norm(variables, "encoder/layer_norm", "model.encoder.layer_norm"),
        **_layer_norm(variables, "decoder/layer_norm", "model.decoder.layer_norm"),
    }
    for stack in ("encoder", "decoder"):
        for index in range(_count_layers(variables, stack)):
            ct2, hf = f"{stack}/layer_{index}", f"model.{stack}.layers.{index}"
            state.update(_attention(variables, f"{ct2}/self_attention", f"{hf}.self_attn", "linear_0", ("q", "k", "v")))
            state.update(_linear(variables, f"{ct2}/self_attention/linear_1", f"{hf}.self_attn.out_proj"))
            state.update(_layer_norm(variables, f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm"))
            if stack == "decoder":
                state.update(_linear(variables, f"{ct2}/attention/linear_0", f"{hf}.encoder_attn.q_proj"))
                state.update(_attention(variables, f"{ct2}/attention", f"{hf}.encoder_attn", "linear_1", ("k", "v")))
                state.update(_linear(variables, f"{ct2}/attention/linear_2", f"{hf}.encoder_attn.out_proj"))
                state.update(_layer_norm(variables, f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm"))
            state.update(_linear(variables, f"{ct2}/ffn/linear_0", f"{hf}.fc1"))
            state.update(_linear(variables, f"{ct2}/ffn/linear_1", f"{hf}.fc2"))
            state.update(_layer_norm(variables, f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm"))
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    return state


def _token_id(tokens: dict[str, int], token: str, folder: Path) -> int:
    if token not in tokens:
        raise CheckpointError(f"{folder / TOKENIZER_NAME} has no {token}: not a Whisper tokenizer")
    return tokens[token]


def generation_config_from_ctranslate2(ct2_config: dict[str, Any], tokenizer: dict[str, Any], vocab_size: int,
                                       folder: Path) -> dict[str, Any]:
    """The generation_config.json transformers and speechtrain read (prompt ids, suppression, languages) from
    CTranslate2's config.json and the tokenizer's special tokens."""
    tokens = {entry["content"]: entry["id"] for entry in tokenizer.get("added_tokens", [])}
    multilingual = vocab_size >= 51865  # English-only checkpoints have 51864 tokens
    eos = _token_id(tokens, "<|endoftext|>", folder)
    config = {
        "decoder_start_token_id": _token_id(tokens, "<|startoftranscript|>", folder),
        "eos_token_id": eos, "pad_token_id": eos, "bos_token_id": eos,
        "no_timestamps_token_id": _token_id(tokens, "<|notimestamps|>", folder),
        "suppress_tokens": list(ct2_config.get("suppress_ids") or []),
        "begin_suppress_tokens": list(ct2_config.get("suppress_ids_begin") or [220, eos]),
        "alignment_heads": [list(pair) for pair in ct2_config.get("alignment_heads") or []],
        "is_multilingual": multilingual, "max_length": 448,
    }
    if multilingual:
        id_to_token = {token_id: token for token, token_id in tokens.items()}
        config["lang_to_id"] = {id_to_token[i]: i for i in ct2_config.get("lang_ids") or [] if i in id_to_token}
        config["task_to_id"] = {task: _token_id(tokens, f"<|{task}|>", folder) for task in ("transcribe", "translate")}
    return config


def load_ctranslate2_whisper(folder: str | Path) -> tuple[WhisperForConditionalGeneration, dict[str, Any]]:
    """(float32 model, generation config dict) of a CTranslate2 Whisper folder."""
    folder = Path(folder)
    for name in (MODEL_NAME, CONFIG_NAME, TOKENIZER_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} not found: a CTranslate2 Whisper folder (faster-whisper's) "
                                    f"holds {MODEL_NAME}, {CONFIG_NAME} and {TOKENIZER_NAME} (ct2-transformers-"
                                    f"converter copies the tokenizer with --copy_files {TOKENIZER_NAME})")
    spec_name, variables = read_model_bin(folder / MODEL_NAME)
    if spec_name != WHISPER_SPEC:
        raise CheckpointError(f"{folder / MODEL_NAME} holds a {spec_name}, not a {WHISPER_SPEC}")
    activation = int(variables["decoder/activation"]) if "decoder/activation" in variables else 3
    if activation not in ACTIVATIONS:
        raise CheckpointError(f"{folder / MODEL_NAME}: unknown ctranslate2 activation type {activation}")
    embeddings = variables["decoder/embeddings/weight"]
    conv1 = variables["encoder/conv1/weight"]  # [d_model, num_mel_bins, 3]
    ffn = variables["encoder/layer_0/ffn/linear_0/weight"]  # [ffn_dim, d_model]
    ct2_config = json.loads((folder / CONFIG_NAME).read_text())
    tokenizer = json.loads((folder / TOKENIZER_NAME).read_text())
    generation = generation_config_from_ctranslate2(ct2_config, tokenizer, embeddings.shape[0], folder)
    config = WhisperConfig(
        vocab_size=embeddings.shape[0], num_mel_bins=conv1.shape[1], d_model=embeddings.shape[1],
        encoder_layers=_count_layers(variables, "encoder"), decoder_layers=_count_layers(variables, "decoder"),
        encoder_attention_heads=int(variables["encoder/num_heads"]),
        decoder_attention_heads=int(variables["decoder/num_heads"]),
        encoder_ffn_dim=ffn.shape[0], decoder_ffn_dim=variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=variables["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=variables["decoder/position_encodings/encodings"].shape[0],
        activation_function=ACTIVATIONS[activation],
        pad_token_id=generation["pad_token_id"], bos_token_id=generation["bos_token_id"],
        eos_token_id=generation["eos_token_id"], decoder_start_token_id=generation["decoder_start_token_id"],
        suppress_tokens=generation["suppress_tokens"], begin_suppress_tokens=generation["begin_suppress_tokens"],
    )
    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state_dict_from_ctranslate2(variables), strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{folder / MODEL_NAME}: weights do not fit Whisper (missing {missing}, "
                              f"unexpected {unexpected})")
    return model.eval(), generation


CT2_QUANTIZATION_ENV = "SPEECHTRAIN_CT2_QUANTIZATION"  # e.g. int8, float16; the runtime can also convert on load


def export_ctranslate2_folder(model_folder: str | Path, out_dir: str | Path) -> list[Path]:
    """A Hugging Face-format Whisper folder as a CTranslate2 folder that faster-whisper loads
    (`faster_whisper.WhisperModel(out_dir)`), through ctranslate2's own `TransformersConverter` (the `ctranslate2`
    extra), with the tokenizer and feature-extractor files beside `model.bin`. Weights stay float32 unless
    `SPEECHTRAIN_CT2_QUANTIZATION` names one of ctranslate2's quantizations."""
    try:
        import ctranslate2
    except ImportError as error:
        raise DependencyError("--format ctranslate2 needs ctranslate2 and transformers: "
                              "pip install 'speechtrain[ctranslate2]'") from error
    model_folder, out_dir = Path(model_folder), Path(out_dir)
    if not (model_folder / TOKENIZER_NAME).is_file():
        raise FileNotFoundError(f"{model_folder / TOKENIZER_NAME} not found: faster-whisper reads the tokenizer from "
                                "the CTranslate2 folder")
    support = [name for name in (TOKENIZER_NAME, "preprocessor_config.json") if (model_folder / name).is_file()]
    converter = ctranslate2.converters.TransformersConverter(str(model_folder), copy_files=support)
    converter.convert(str(out_dir), quantization=os.environ.get(CT2_QUANTIZATION_ENV) or None, force=True)
    return [out_dir / name for name in (MODEL_NAME, CONFIG_NAME, *support)]
