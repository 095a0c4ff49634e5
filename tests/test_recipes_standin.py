"""Every recipe trains one step, also those whose corpus or pretrained model is not here: the test builds a tiny
stand-in of each in the layout the recipe reads (an LJSpeech, LibriSpeech or LibriTTS folder under
`paths.data_dir`, a tokens folder made with random tiny codecs, a random tiny Hugging Face-format model folder saved
by speechtrain) and shrinks only the sizes (widths, depths, vocabulary, workers), so that a recipe cannot again fail
only on the real corpus.

What a recipe needs is read from its own config: a corpus or tokens folder under `paths.data_dir` is built, the
bundled ones are used as they are, and a `model.pretrained` left to the user is a folder saved from the bundled
recipe of the same model family.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from omegaconf import DictConfig, OmegaConf

from speechtrain.hub import save_bundle
from speechtrain.train import BUNDLED_DATA_DIR, CONFIG_DIR, build, train

# tests/data is no package; one_torch_thread is an autouse fixture
sys.path.insert(0, str(Path(__file__).parent / "data"))
from tiny_tokenizers import one_torch_thread, tiny_codec, tiny_hubert  # noqa: E402, F401

RECIPES = sorted(path.stem for path in (CONFIG_DIR / "recipe").glob("*.yaml"))
BUNDLED = [name for name in RECIPES if "mini" in name]  # tiny models on the shipped corpora, run as they are
# The corpus a tokens folder under paths.data_dir is made from (recipes/libritts/prepare.py tokenizes LibriTTS).
TOKENS_SOURCE_LAYOUT = {"soundstorm_libritts": "libritts"}
PHONEMIZER_WORKS = shutil.which("espeak-ng") is not None and importlib.util.find_spec("phonemizer") is not None
TEXTS = [line.split("|")[1] for line in (BUNDLED_DATA_DIR / "mini" / "metadata.csv").read_text().splitlines()[:8]]

# Size overrides by model builder: of the model for recipes that train one from scratch at full size, of the
# task's own networks for every recipe that is not bundled; nothing else is changed.
TINY_MODEL = {
    "build_speech2text": ["model.config.d_model=32", "model.config.conv_channels=32", "model.config.encoder_layers=1",
                          "model.config.decoder_layers=1", "model.config.encoder_ffn_dim=64",
                          "model.config.decoder_ffn_dim=64", "model.config.encoder_attention_heads=2",
                          "model.config.decoder_attention_heads=2", "tokenizer.vocab_size=30"],
    "build_vits": ["model.config.hidden_size=32", "model.config.ffn_dim=64", "model.config.flow_size=32",
                   "model.config.num_hidden_layers=1", "model.config.upsample_initial_channel=32",
                   "model.config.posterior_encoder_num_wavenet_layers=2", "model.config.prior_encoder_num_flows=1",
                   "model.config.duration_predictor_filter_channels=32", "model.config.duration_predictor_num_flows=1"],
    "build_soundstorm": ["model.config.dim=32", "model.config.depth=1", "model.config.heads=2",
                         "model.config.dim_head=16"],
}
TINY_TASK = {"build_vits": ["task.discriminator.channel_divisor=16"]}  # 0.2 M parameters instead of 46.7 M
# One step, a validation batch and the export, on one process without loader workers or a logger.
ONE_STEP = ["trainer.max_epochs=1", "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1",
            "trainer.check_val_every_n_epoch=1", "++trainer.val_check_interval=1.0", "trainer.max_steps=-1",
            "data.num_workers=0", "logger=none"]
# Shorter validation: greedy decoding of a few tokens (ASR), one generation step per level for the audio sample
# (SoundStorm).
ASR_ONE_STEP = ["task.max_new_tokens=4"]
SOUNDSTORM_ONE_STEP = ["task.sample_steps=[1,1]"]


def _write_tone(path: Path, seconds: float, sample_rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32), sample_rate)


def _durations(count: int) -> list[float]:
    return [1.2 + 0.1 * i for i in range(count)]  # under the tiny Whisper's 3 s window, above VITS's segment


def make_ljspeech(root: Path, count: int = 8) -> None:
    lines = []
    for number, (text, seconds) in enumerate(zip(TEXTS * 2, _durations(count))):
        _write_tone(root / "wavs" / f"LJ001-{number:04d}.wav", seconds, 22050)
        lines.append(f"LJ001-{number:04d}|{text}|{text}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")


def make_librispeech(root: Path, count: int = 6) -> None:
    """`<speaker>/<chapter>/<speaker>-<chapter>.trans.txt` with upper-case transcripts and 16 kHz flac beside it."""
    for first, speaker in enumerate(("19", "26")):
        chapter = root / speaker / "198"
        lines = []
        for number, (text, seconds) in enumerate(zip(TEXTS[first * 3 :], _durations(count // 2))):
            utterance = f"{speaker}-198-{number:04d}"
            _write_tone(chapter / f"{utterance}.flac", seconds, 16000)
            lines.append(f"{utterance} {text.upper().strip('.?!').replace(',', '')}")
        (chapter / f"{speaker}-198.trans.txt").write_text("\n".join(lines) + "\n")


def make_libritts(root: Path, count: int = 6) -> None:
    """`<speaker>/<chapter>/<utterance>.wav` at 24 kHz with `.normalized.txt` and `.original.txt` beside it."""
    for speaker in ("19", "26"):
        for number, (text, seconds) in enumerate(zip(TEXTS, _durations(count // 2))):
            utterance = root / speaker / "198" / f"{speaker}_198_000000_{number:06d}"
            _write_tone(utterance.with_suffix(".wav"), seconds, 24000)
            utterance.with_suffix(".normalized.txt").write_text(text)
            utterance.with_suffix(".original.txt").write_text(text)


CORPUS_BUILDERS: dict[str, Callable[[Path], None]] = {
    "ljspeech": make_ljspeech, "librispeech": make_librispeech, "libritts": make_libritts,
}


def make_tokens(out: Path, layout: str, kmeans_from: Path | None) -> None:
    """A tokens folder as `speechtrain-tokenize` writes it, from a stand-in corpus, with random tiny EnCodec and
    HuBERT; a validation folder reuses the training folder's k-means, as the tokenizer requires."""
    from speechtrain.data.semantic import KMeans
    from speechtrain.data.token_shards import tokenize_corpus

    corpus = out.parent / f"{out.name}_{layout}"
    CORPUS_BUILDERS[layout](corpus)
    semantic = tiny_hubert()
    if kmeans_from is not None:
        semantic.kmeans = KMeans.load(kmeans_from / "kmeans.safetensors")
    tokenize_corpus({"format": layout, "path": str(corpus)}, out, tiny_codec(), semantic, kmeans_clusters=8,
                    kmeans_utterances=4, kmeans_iterations=3)


def _under(path: str | None, folder: Path) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(folder.resolve())


def _builder(cfg: DictConfig) -> str:
    return str(cfg.model._target_).rpartition(".")[2]


@pytest.fixture(scope="module")
def pretrained_folder(compose, tmp_path_factory) -> Callable[[DictConfig], Path]:
    """A random tiny Hugging Face-format folder of the model family a config's `model` names, saved with
    speechtrain's own `save_bundle` from the bundled recipe that builds that family from scratch (cached)."""
    folders: dict[tuple, Path] = {}

    def family(cfg: DictConfig) -> tuple:
        return _builder(cfg), cfg.model.get("kind")

    def _folder(cfg: DictConfig) -> Path:
        key = family(cfg)
        if key not in folders:
            out = tmp_path_factory.mktemp("pretrained")
            for name in BUNDLED:
                tiny = compose(f"recipe={name}", output_dir=out / "run")
                if family(tiny) == key:
                    break
            else:
                raise AssertionError(f"no bundled recipe builds a {key} model to stand in for model.pretrained")
            task, _ = build(tiny)
            save_bundle(out / "model", task.model, task.tokenizer, task.feature_extractor)
            folders[key] = out / "model"
        return folders[key]

    return _folder


def standin_overrides(recipe: str, compose, pretrained_folder, tmp_path: Path) -> list[str]:
    """Builds what `recipe` reads that is not bundled and returns the overrides that point it there and shrink it."""
    data_dir = tmp_path / "data"
    overrides = [f"recipe={recipe}", f"paths.data_dir={data_dir}"]
    cfg = compose(*overrides, output_dir=tmp_path / "probe")
    if OmegaConf.is_missing(cfg.model, "pretrained"):
        overrides.append(f"model.pretrained={pretrained_folder(cfg)}")
    elif recipe not in BUNDLED:
        overrides += TINY_MODEL.get(_builder(cfg), [])
    if recipe not in BUNDLED:
        overrides += TINY_TASK.get(_builder(cfg), [])
    if "train" in cfg.data:  # a corpus (CorpusSpec) for the ASR and TTS data modules
        for split in ("train", "val"):
            spec = cfg.data.get(split)
            if spec is not None and _under(spec.path, data_dir):
                CORPUS_BUILDERS[spec.format](Path(spec.path))
    if "tokens_dir" in cfg.data and _under(cfg.data.tokens_dir, data_dir):
        layout = TOKENS_SOURCE_LAYOUT[recipe]
        make_tokens(Path(cfg.data.tokens_dir), layout, kmeans_from=None)
        if cfg.data.val_dir is not None:
            make_tokens(Path(cfg.data.val_dir), layout, kmeans_from=Path(cfg.data.tokens_dir))
    if "allow_foreign_semantic_ids" in cfg.data:  # the bundled k-means ids for a random stand-in Bark: told so
        overrides.append("data.allow_foreign_semantic_ids=true")
    if cfg.get("tokenizer") and cfg.tokenizer.get("phonemize") and not PHONEMIZER_WORKS:
        # espeak-ng (a Debian package) and phonemizer are optional: without them a phonemizing recipe is run on
        # characters, which changes its symbol table and nothing else.
        overrides.append("tokenizer.phonemize=false")
    task_target = str(cfg.task._target_)
    if task_target.endswith("Seq2SeqASRTask"):
        overrides += ASR_ONE_STEP
    elif task_target.endswith("SoundStormTask"):
        overrides += SOUNDSTORM_ONE_STEP
    return overrides + ONE_STEP


def test_every_recipe_is_covered():
    assert {"vits_ljspeech", "whisper_librispeech", "s2t_librispeech", "soundstorm_libritts", "whisper_finetune",
            "s2t_finetune", "vits_finetune", "bark_semantic", "bark_coarse", "bark_fine"} <= set(RECIPES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains_one_step_on_a_standin(recipe, compose, pretrained_folder, tmp_path):
    overrides = standin_overrides(recipe, compose, pretrained_folder, tmp_path)
    cfg = compose(*overrides, output_dir=tmp_path / "run")
    if "train" in cfg.data:  # the stand-in or a bundled corpus, not one that happens to be on this machine, is read
        read = [cfg.data[split].path for split in ("train", "val") if cfg.data.get(split) is not None]
    else:
        read = [folder for folder in (cfg.data.tokens_dir, cfg.data.get("val_dir")) if folder is not None]
    assert read and all(_under(path, tmp_path / "data") or _under(path, BUNDLED_DATA_DIR) for path in read), read
    metrics = train(cfg)
    losses = {key: value for key, value in metrics.items() if key.startswith("train/loss")}
    assert losses and all(math.isfinite(value) for value in losses.values()), metrics
    assert any(key.startswith("val/") for key in metrics), metrics  # and one validation batch
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    assert (tmp_path / "run" / "exported" / "config.json").is_file()
