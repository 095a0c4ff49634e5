"""Piper voices (OHF-Voice/piper1-gpl) in and out of speechtrain's VITS.

A Piper voice is an original-VITS generator (jaywalnut310/vits module names: `enc_p`, `dp`, `flow`, `dec`, `emb_g`)
exported to ONNX, beside a `.onnx.json` with its phoneme map, espeak voice, sample rate and inference scales.
The ONNX file holds what synthesis runs, with the flow's weight norm folded into anonymous `onnx::Conv_*`
initializers (their consumer nodes, e.g. `/flow/flows.0/enc/in_layers.0/Conv`, say where they belong) and the
first ElementwiseAffine's `logs` folded into `exp(-logs)`. It has no posterior encoder (`enc_q`), no posterior
flows of the duration predictor (`dp.post_*`) and not the duration flow that synthesis skips (`dp.flows.1`, the
"useless vflow" of the original): an import keeps those at their fresh initialisation and says so. A
`piper.train` Lightning checkpoint has every weight and its hyper-parameters, and imports in full.

`export_piper` writes the other way: `VOICE.onnx` with Piper's interface (inputs `input` `[B, T]`,
`input_lengths` `[B]`, `scales` = [noise, length, noise_w], `sid` `[B]` for several speakers; output
`[B, 1, 1, samples]`, as Piper's own exports) and `VOICE.onnx.json`, which `piper` and sherpa-onnx load.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from speechtrain.errors import CheckpointError, DependencyError
from speechtrain.hub import check_state_dict
from speechtrain.models.vits.config import VitsConfig
from speechtrain.models.vits.hub import state_dict_from_hf
from speechtrain.models.vits.modeling import VitsModel, lengths_to_mask
from speechtrain.models.vits.tokenizer import PiperPhonemeTokenizer

logger = logging.getLogger(__name__)

ONNX_OPSET = 15  # what piper.train.export_onnx uses
PIPER_FILTER_LENGTH = 1024  # Piper's STFT for the posterior encoder, at every sample rate


def _index(transform: Callable[[int], int]) -> Callable[[re.Match], str]:
    return lambda match: f"{match.group(1)}{transform(int(match.group(2)))}."


# (pattern, replacement) over original-VITS names, applied in order; the flows' indices skip the Flip layers
# that the original interleaves (transformers' and our flow lists hold the parameterised layers only)
_RENAMES: list[tuple[str, str | Callable[[re.Match], str]]] = [
    # text encoder (enc_p)
    (r"^enc_p\.emb\.", "text_encoder.embed_tokens."),
    (r"^enc_p\.encoder\.attn_layers\.(\d+)\.conv_([qkv])\.", r"text_encoder.encoder.layers.\1.attention.\2_proj."),
    (r"^enc_p\.encoder\.attn_layers\.(\d+)\.conv_o\.", r"text_encoder.encoder.layers.\1.attention.out_proj."),
    (r"^enc_p\.encoder\.attn_layers\.(\d+)\.emb_rel_", r"text_encoder.encoder.layers.\1.attention.emb_rel_"),
    (r"^enc_p\.encoder\.norm_layers_1\.(\d+)\.", r"text_encoder.encoder.layers.\1.layer_norm."),
    (r"^enc_p\.encoder\.norm_layers_2\.(\d+)\.", r"text_encoder.encoder.layers.\1.final_layer_norm."),
    (r"^enc_p\.encoder\.ffn_layers\.(\d+)\.", r"text_encoder.encoder.layers.\1.feed_forward."),
    (r"^enc_p\.proj\.", "text_encoder.project."),
    # flow: coupling layers without the Flips between them
    (r"^(flow\.flows\.)(\d+)\.", _index(lambda i: i // 2)),
    (r"^flow\.flows\.(\d+)\.pre\.", r"flow.flows.\1.conv_pre."),
    (r"^flow\.flows\.(\d+)\.post\.", r"flow.flows.\1.conv_post."),
    (r"^flow\.flows\.(\d+)\.enc\.", r"flow.flows.\1.wavenet."),
    # posterior encoder (enc_q)
    (r"^enc_q\.pre\.", "posterior_encoder.conv_pre."),
    (r"^enc_q\.enc\.", "posterior_encoder.wavenet."),  # the 16-layer WaveNet
    (r"^enc_q\.proj\.", "posterior_encoder.conv_proj."),
    # stochastic duration predictor (dp) and its posterior flows
    (r"^(dp\.(?:post_)?flows\.)(\d+)\.", _index(lambda i: (i + 1) // 2)),
    (r"^dp\.(post_)?flows\.0\.m$", r"duration_predictor.\1flows.0.translate"),  # flows.0: the elementwise affine
    (r"^dp\.(post_)?flows\.0\.logs$", r"duration_predictor.\1flows.0.log_scale"),
    (r"^dp\.(post_)?flows\.(\d+)\.pre\.", r"duration_predictor.\1flows.\2.conv_pre."),
    (r"^dp\.(post_)?flows\.(\d+)\.proj\.", r"duration_predictor.\1flows.\2.conv_proj."),
    (r"^dp\.(post_)?flows\.(\d+)\.convs\.", r"duration_predictor.\1flows.\2.conv_dds."),  # DDSConv
    (r"^dp\.(post_)?pre\.", r"duration_predictor.\1conv_pre."),
    (r"^dp\.(post_)?proj\.", r"duration_predictor.\1conv_proj."),
    (r"^dp\.(post_)?convs\.", r"duration_predictor.\1conv_dds."),
    (r"^dp\.cond\.", "duration_predictor.cond."),
    (r"conv_dds\.convs_sep\.", "conv_dds.convs_dilated."),
    (r"conv_dds\.convs_1x1\.", "conv_dds.convs_pointwise."),
    # HiFi-GAN decoder (dec) and the speaker embedding
    (r"^dec\.ups\.", "decoder.upsampler."),
    (r"^dec\.", "decoder."),
    (r"^emb_g\.", "embed_speaker."),
    (r"\.gamma$", ".weight"),
    (r"\.beta$", ".bias"),
]
_ATTENTION_PROJECTION = re.compile(r"\.attention\.(q|k|v|out)_proj\.weight$")


def rename_original(key: str) -> str:
    """An original-VITS / Piper parameter name as ours (transformers'); weight-norm suffixes (`weight_g`,
    `weight_v`) are kept for the VITS loader to map."""
    for pattern, replacement in _RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def state_dict_from_original(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An original-VITS generator state dict (Piper's `model_g`) with our names; the text encoder's 1x1
    attention convolutions `[out, in, 1]` become linear weights `[out, in]`."""
    renamed = {}
    for key, value in state.items():
        key = rename_original(key)
        renamed[key] = value[..., 0] if _ATTENTION_PROJECTION.search(key) else value
    return renamed


def config_from_piper(hparams: Mapping[str, Any], voice: Mapping[str, Any]) -> VitsConfig:
    """Our VITS config for Piper's hyper-parameters (`piper.train.vits.lightning.VitsModel`'s names) and the
    voice's `.onnx.json` (sample rate, inference scales, pad id)."""
    inference = voice.get("inference", {})
    num_speakers = int(hparams.get("num_speakers", voice.get("num_speakers", 1)))
    p_dropout = float(hparams.get("p_dropout", 0.1))
    return VitsConfig(
        vocab_size=int(hparams["num_symbols"]),
        hidden_size=int(hparams["hidden_channels"]),
        flow_size=int(hparams["inter_channels"]),
        ffn_dim=int(hparams["filter_channels"]),
        num_attention_heads=int(hparams["n_heads"]),
        num_hidden_layers=int(hparams["n_layers"]),
        ffn_kernel_size=int(hparams["kernel_size"]),
        window_size=4,
        layerdrop=0.0,
        hidden_dropout=p_dropout,
        attention_dropout=p_dropout,
        activation_dropout=p_dropout,
        spectrogram_bins=int(hparams.get("filter_length", PIPER_FILTER_LENGTH)) // 2 + 1,
        resblock_type=int(hparams["resblock"]),
        resblock_kernel_sizes=list(hparams["resblock_kernel_sizes"]),
        resblock_dilation_sizes=[list(d) for d in hparams["resblock_dilation_sizes"]],
        upsample_rates=list(hparams["upsample_rates"]),
        upsample_initial_channel=int(hparams["upsample_initial_channel"]),
        upsample_kernel_sizes=list(hparams["upsample_kernel_sizes"]),
        num_speakers=num_speakers,
        speaker_embedding_size=int(hparams.get("gin_channels") or 0) if num_speakers > 1 else 0,
        use_stochastic_duration_prediction=bool(hparams.get("use_sdp", True)),
        sampling_rate=int(voice.get("audio", {}).get("sample_rate", hparams.get("sample_rate", 22050))),
        noise_scale=float(inference.get("noise_scale", 0.667)),
        noise_scale_duration=float(inference.get("noise_w", 0.8)),
        speaking_rate=1.0 / float(inference.get("length_scale", 1.0)),
        pad_token_id=voice["phoneme_id_map"]["_"][0] if "_" in voice.get("phoneme_id_map", {}) else 0,
    )


def _onnx_initializers(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The generator's weights of a Piper `.onnx` under original-VITS names, and the layout the node attributes
    hold (upsampling strides, residual-block dilations)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as error:
        raise DependencyError("importing a Piper .onnx voice needs onnx: pip install 'speechtrain[piper]'") from error
    graph = onnx.load(str(path)).graph
    initializers = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    state: dict[str, torch.Tensor] = {}
    strides, dilations = {}, {}
    for node in graph.node:
        module = node.name.strip("/").rsplit("/", 1)[0].replace("/", ".")  # /flow/flows.0/enc/in_layers.0/Conv
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "ConvTranspose" and module.startswith("dec.ups."):
            strides[int(module.rsplit(".", 1)[1])] = attributes["strides"][0]
        if node.op_type == "Conv" and module.startswith("dec.resblocks."):
            dilations[module] = attributes.get("dilations", [1])[0]
        for position, name in enumerate(node.input):
            if name not in initializers or _is_named(name):
                continue
            if node.op_type in ("Conv", "ConvTranspose") and position in (1, 2):
                state[f"{module}.{'weight' if position == 1 else 'bias'}"] = initializers[name]
            elif node.op_type == "Gather" and module == "enc_p.emb":
                state["enc_p.emb.weight"] = initializers[name]
            elif node.op_type == "Mul" and module == "dp.flows.0" and name.endswith("Exp_output_0"):
                state["dp.flows.0.logs"] = -torch.log(initializers[name])  # synthesis multiplies by exp(-logs)
    state.update({name: value for name, value in initializers.items() if _is_named(name)})
    return state, {"strides": strides, "dilations": dilations}


def _is_named(initializer: str) -> bool:
    return re.match(r"^(enc_p|dp|flow|dec|emb_g)\.", initializer) is not None


def _hparams_from_onnx(state: Mapping[str, torch.Tensor], layout: Mapping[str, Any],
                       voice: Mapping[str, Any]) -> dict[str, Any]:
    """Piper's hyper-parameters, read off the weights' shapes and the nodes' attributes."""
    def count(pattern: str) -> int:
        return len({match.group(1) for key in state if (match := re.match(pattern, key))})

    num_upsamples = count(r"^dec\.ups\.(\d+)\.weight$")
    num_blocks = count(r"^dec\.resblocks\.(\d+)\.")
    num_kernels = num_blocks // num_upsamples
    resblock = "2" if any(key.startswith("dec.resblocks.0.convs.") for key in state) else "1"
    convs = "convs" if resblock == "2" else "convs1"
    num_dilations = count(rf"^dec\.resblocks\.0\.{convs}\.(\d+)\.weight$")
    head_dim = state["enc_p.encoder.attn_layers.0.emb_rel_k"].shape[-1]
    hidden = state["enc_p.emb.weight"].shape[1]
    num_speakers = int(voice.get("num_speakers", 1))
    return {
        "num_symbols": state["enc_p.emb.weight"].shape[0],
        "hidden_channels": hidden,
        "inter_channels": state["enc_p.proj.weight"].shape[0] // 2,
        "filter_channels": state["enc_p.encoder.ffn_layers.0.conv_1.weight"].shape[0],
        "n_heads": hidden // head_dim,
        "n_layers": count(r"^enc_p\.encoder\.attn_layers\.(\d+)\."),
        "kernel_size": state["enc_p.encoder.ffn_layers.0.conv_1.weight"].shape[2],
        "resblock": resblock,
        "resblock_kernel_sizes": [state[f"dec.resblocks.{k}.{convs}.0.weight"].shape[2] for k in range(num_kernels)],
        "resblock_dilation_sizes": [[layout["dilations"][f"dec.resblocks.{k}.{convs}.{d}"]
                                     for d in range(num_dilations)] for k in range(num_kernels)],
        "upsample_rates": [layout["strides"][i] for i in range(num_upsamples)],
        "upsample_initial_channel": state["dec.conv_pre.weight"].shape[0],
        "upsample_kernel_sizes": [state[f"dec.ups.{i}.weight"].shape[2] for i in range(num_upsamples)],
        "num_speakers": num_speakers,
        "gin_channels": state["emb_g.weight"].shape[1] if num_speakers > 1 else 0,
        "use_sdp": "dp.flows.0.m" in state,
    }


def _read_voice_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; a Piper voice's .onnx comes with its .onnx.json beside it")
    try:
        voice = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from error
    if "phoneme_id_map" not in voice:
        raise CheckpointError(f"{path}: has no phoneme_id_map; is it a Piper voice config?")
    return voice


def load_piper_voice(source: str | Path, trust_checkpoint: bool = False) -> tuple[VitsModel, PiperPhonemeTokenizer]:
    """A Piper voice as our VITS model and its phoneme tokenizer, from a `.onnx` (with its `.onnx.json` beside)
    or a `piper.train` Lightning checkpoint (`.ckpt`, with the voice's `config.json` or `.onnx.json` beside it,
    as Piper's training folders have). Weights the source lacks keep their fresh initialisation (listed in a
    warning)."""
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: not found; expected a Piper voice (.onnx) or a piper.train .ckpt")
    if source.suffix == ".onnx":
        voice = _read_voice_json(Path(f"{source}.json"))
        original, layout = _onnx_initializers(source)
        hparams = _hparams_from_onnx(original, layout, voice)
    else:
        from speechtrain.safe_load import load_checkpoint

        checkpoint = load_checkpoint(source, trust=trust_checkpoint)
        if "hyper_parameters" not in checkpoint or "state_dict" not in checkpoint:
            raise CheckpointError(f"{source}: not a piper.train checkpoint (no hyper_parameters/state_dict)")
        hparams = dict(checkpoint["hyper_parameters"])
        candidates = [source.with_suffix(".onnx.json"), source.parent / "config.json",
                      source.parent.parent / "config.json"]
        voice = _read_voice_json(next((p for p in candidates if p.is_file()), candidates[0]))
        original = {key[len("model_g."):]: value for key, value in checkpoint["state_dict"].items()
                    if key.startswith("model_g.")}
    model = VitsModel(config_from_piper(hparams, voice))
    state = state_dict_from_hf(model, state_dict_from_original(original))
    fresh = {key: value for key, value in model.state_dict().items() if key not in state}
    if fresh:
        logger.warning("%s: %d weights are not in the file and keep their fresh initialisation (%s); the posterior "
                       "encoder needs recovering before GAN fine-tuning", source, len(fresh), _summarise(fresh))
    state.update(fresh)
    check_state_dict(model, state, str(source))
    model.load_state_dict(state)
    return model, PiperPhonemeTokenizer(voice)


def _summarise(keys: list[str]) -> str:
    """`posterior_encoder.* (...)`: the module prefixes of `keys`, two levels deep, with counts."""
    prefixes: dict[str, int] = {}
    for key in keys:
        prefix = ".".join(key.split(".")[:2])
        prefixes[prefix] = prefixes.get(prefix, 0) + 1
    return ", ".join(f"{prefix}.* ({n})" for prefix, n in sorted(prefixes.items()))


class PiperInterface(nn.Module):
    """Our VITS behind Piper's ONNX interface: phoneme ids, their lengths, [noise, length, noise_w] scales and,
    for several speakers, speaker ids -> waveform `[B, 1, 1, samples]` (the shape Piper's own exports have:
    `infer(...)[0].unsqueeze(1)` of a `[B, 1, samples]` output)."""

    def __init__(self, model: VitsModel):
        super().__init__()
        self.model = model

    def forward(self, input: torch.Tensor, input_lengths: torch.Tensor, scales: torch.Tensor,
                sid: torch.Tensor | None = None) -> torch.Tensor:
        mask = lengths_to_mask(input_lengths, input.shape[1]).long()  # [B, T]
        waveform, _ = self.model(input, mask, speaker_id=sid, noise_scale=scales[0], length_scale=scales[1],
                                 noise_scale_duration=scales[2])
        return waveform[:, None, None]  # [B, 1, 1, samples]


def _inference_copy(model: VitsModel) -> VitsModel:
    """An eval-mode copy with every weight norm folded into its weight, as Piper exports its decoder. Built anew
    rather than deep-copied: a copy would share the parametrised modules' classes, whose `weight` property the
    folding deletes."""
    folded = VitsModel(model.config)
    folded.load_state_dict(model.state_dict())
    for module in folded.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return folded.eval().float()


def voice_json(model: VitsModel, tokenizer: PiperPhonemeTokenizer) -> dict[str, Any]:
    """The `.onnx.json` of an export: the tokenizer's voice config with this model's sample rate, speakers and
    inference scales."""
    config = model.config
    voice = copy.deepcopy(tokenizer.voice)
    voice.setdefault("audio", {})["sample_rate"] = config.sampling_rate
    voice["num_symbols"] = config.vocab_size
    voice["num_speakers"] = config.num_speakers
    voice["inference"] = {"noise_scale": config.noise_scale, "length_scale": 1.0 / config.speaking_rate,
                          "noise_w": config.noise_scale_duration}
    voice.setdefault("speaker_id_map", {})
    return voice


def export_piper(model: VitsModel, tokenizer: Any, onnx_path: str | Path) -> list[Path]:
    """Writes `onnx_path` (`VOICE.onnx`) and `VOICE.onnx.json` with Piper's exact interface, and what sherpa-onnx's
    Piper path reads besides: the model's metadata (`sherpa_onnx_metadata`) and `tokens.txt` beside it."""
    if not isinstance(tokenizer, PiperPhonemeTokenizer):
        raise CheckpointError(
            f"--format piper needs a Piper phoneme tokenizer (a voice imported with speechtrain-import-piper, or "
            f"fine-tuned from one); this model's tokenizer is a {type(tokenizer).__name__}, whose ids Piper's "
            "phonemizer would not reproduce"
        )
    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    interface = PiperInterface(_inference_copy(model))
    multi_speaker = model.config.num_speakers > 1
    ids = torch.randint(1, model.config.vocab_size, (1, 50))
    inputs = (ids, torch.tensor([50]), torch.tensor([0.667, 1.0, 0.8]))
    names = ["input", "input_lengths", "scales"]
    if multi_speaker:
        inputs, names = (*inputs, torch.tensor([0])), [*names, "sid"]
    axes = {"input": {0: "batch_size", 1: "phonemes"}, "input_lengths": {0: "batch_size"},
            "output": {0: "batch_size", 3: "time"}}
    if multi_speaker:
        axes["sid"] = {0: "batch_size"}
    with torch.no_grad():
        torch.onnx.export(interface, inputs, str(onnx_path), opset_version=ONNX_OPSET, input_names=names,
                          output_names=["output"], dynamic_axes=axes, dynamo=False)
    voice = voice_json(model, tokenizer)
    _add_onnx_metadata(onnx_path, sherpa_onnx_metadata(voice))
    json_path = Path(f"{onnx_path}.json")
    json_path.write_text(json.dumps(voice, ensure_ascii=False, indent=2))
    tokens_path = onnx_path.parent / "tokens.txt"
    tokens_path.write_text("".join(f"{symbol} {ids[0]}\n" for symbol, ids in voice["phoneme_id_map"].items()),
                           encoding="utf-8")
    return [onnx_path, json_path, tokens_path]


def sherpa_onnx_metadata(voice: Mapping[str, Any]) -> dict[str, str]:
    """The metadata sherpa-onnx's VITS loader reads from a Piper model (what its `add_meta_data` script adds to
    Piper's own releases): phonemes from espeak-ng with the voice's language, speakers and sample rate."""
    return {"model_type": "vits", "comment": "piper", "has_espeak": "1",
            "language": voice.get("language", {}).get("name_english", ""),
            "voice": voice.get("espeak", {}).get("voice", ""), "n_speakers": str(voice.get("num_speakers", 1)),
            "sample_rate": str(voice["audio"]["sample_rate"])}


def _add_onnx_metadata(path: Path, metadata: Mapping[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))



def piper_voice_name(tokenizer: PiperPhonemeTokenizer, quality: str = "medium") -> str:
    """Piper's file name for a voice, `<language>-<dataset>-<quality>` (en_US-joe-medium), from its config."""
    voice = tokenizer.voice
    language = voice.get("language", {}).get("code") or voice.get("espeak", {}).get("voice", "voice")
    quality = voice.get("audio", {}).get("quality") or quality
    return f"{language}-{voice.get('dataset') or 'speechtrain'}-{quality}"


def export_piper_folder(model_folder: str | Path, out_dir: str | Path) -> list[Path]:
    """`speechtrain-export --format piper`: the VITS folder `model_folder` as `out_dir/<voice name>.onnx` and its
    `.onnx.json`."""
    from speechtrain.hub import load_bundle

    model, tokenizer, _ = load_bundle(model_folder)
    if not isinstance(tokenizer, PiperPhonemeTokenizer):
        raise CheckpointError(f"{model_folder}: --format piper needs a voice with Piper's phonemes (imported with "
                              f"speechtrain-import-piper, or fine-tuned from one); its tokenizer is a "
                              f"{type(tokenizer).__name__}")
    return export_piper(model, tokenizer, Path(out_dir) / f"{piper_voice_name(tokenizer)}.onnx")
