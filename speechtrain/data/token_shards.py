"""Tokenized corpora on disk: EnCodec codes and HuBERT k-means ids in resumable safetensors shards.

Layout of a tokens folder:

    tokens.json               format_version, codec and semantic settings, the corpus spec, shard_size,
                              max_duration, shards [{name, utterances}], skipped [{id, audio_path, reason}]
    kmeans.safetensors        the k-means centroids behind the semantic ids (absent when a trained quantizer,
                              recorded in tokens.json's semantic.quantizer, made them)
    shard-00000.safetensors   acoustic int16 [sum_frames, levels], acoustic_lengths int64 [n],
                              semantic int16 [sum_semantic_frames] (int32 above 32768 clusters, and in shards
                              written before int16 semantic ids, which read as well), semantic_lengths int64 [n]
    shard-00000.jsonl         one line per utterance in shard order: id, text, speaker, duration, audio_path

`tokens.json` appears only when every shard is written; until then `tokens.partial.json` holds the
settings, so a rerun with other settings is refused instead of mixing tokens. Each file is written
to a temporary name, fsynced and renamed, so an interrupted run leaves whole shards only, and a
rerun skips them after checking that they hold the utterances they should. Utterances go to shards
in corpus order after the header check, so which shard holds what is known before encoding; inside a
shard they are encoded `batch_size` at a time, longest first (so that a batch pads little), and written
in corpus order. Writing the same corpus twice with the same `batch_size` gives byte-identical files;
another batch size gives the same ids but where float rounding in a batch flips one, which needs two
codebook entries or centroids about as close (`EncodecCodec.batch_embeddings`,
`HubertSemanticTokenizer.features_batch`; none flips on the mini corpus, whose files are the same bytes at
batch sizes 1, 3 and 8). The k-means is fitted on features computed one utterance at a time.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from tqdm.auto import tqdm

from speechtrain.atomic import atomic_write_bytes
from speechtrain.data.audio import AudioError, audio_info, load_audio
from speechtrain.data.codecs import EncodecCodec
from speechtrain.data.corpora import CorpusSpec, Utterance, read_corpus
from speechtrain.data.datasets import CheckedDataset
from speechtrain.data.semantic import HubertSemanticTokenizer, KMeans
from speechtrain.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
INFO_FILE = "tokens.json"
PARTIAL_INFO_FILE = "tokens.partial.json"
KMEANS_FILE = "kmeans.safetensors"
SHARD_DTYPES = {"acoustic": torch.int16, "acoustic_lengths": torch.int64,
                "semantic": torch.int16, "semantic_lengths": torch.int64}
WIDE_SEMANTIC_DTYPE = torch.int32  # semantic ids of more than 32768 clusters, and those of older shards
NO_DURATION_LIMIT = 1e7  # seconds: what "no max_duration" means to CheckedDataset's header check
SETTINGS_KEYS = ("format_version", "codec", "semantic", "corpus", "shard_size", "max_duration")
RUN_HINT = "run speechtrain-tokenize (or speechtrain.data.token_shards.tokenize_corpus) to create it"


@dataclass
class TokenizedUtterance:
    """One utterance's tokens: `acoustic` [frames, levels] and `semantic` [semantic_frames] integer tensors, int16
    when read from shards (a quarter of int64's memory; semantic int32 above 32768 clusters): a collator makes
    them long where it builds a batch."""

    id: str
    text: str
    speaker: str | None
    duration: float  # seconds
    acoustic: torch.Tensor
    semantic: torch.Tensor


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def _json_bytes(value) -> bytes:
    return (json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


class _HeaderCheck(CheckedDataset):
    """CheckedDataset's audio checks (present, readable, not empty, not too long), keeping each problem by id."""

    def __init__(self, utterances: list[Utterance], max_duration: float | None, strict: bool):
        self.problems: dict[str, str] = {}
        limit = NO_DURATION_LIMIT if max_duration is None else max_duration
        super().__init__(utterances, sample_rate=1, max_duration=limit, strict=strict, name="tokenize")

    def _check(self, utterance: Utterance) -> tuple[float, tuple[str, str] | None, list[int]]:
        duration, problem = self._check_audio(utterance)
        if problem is not None:
            self.problems[utterance.id] = f"{problem[0]} ({problem[1]})"
        return duration, problem, []


def _load_waveform(utterance: Utterance, max_duration: float | None) -> tuple[torch.Tensor, int]:
    """The audio at its own rate (each tokenizer resamples once), checked against `max_duration` again:
    a stated duration may be wrong."""
    source = utterance.audio_bytes if utterance.audio_bytes is not None else utterance.audio_path
    rate = audio_info(source, name=utterance.audio_path).sample_rate
    waveform = load_audio(source, rate, name=utterance.audio_path)
    if max_duration is not None and waveform.numel() > max_duration * rate:
        raise AudioError(utterance.audio_path, f"longer than {max_duration} s ({waveform.numel() / rate:.2f} s "
                         "once loaded; the corpus stated otherwise)")
    return waveform, rate


def _length_batches(durations: list[float], batch_size: int) -> list[list[int]]:
    """Indices of `durations` in batches of `batch_size`, longest first (little padding, and a batch too large for
    memory fails first); ties keep their order, so the batches are the same in every run."""
    order = sorted(range(len(durations)), key=lambda i: -durations[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def semantic_dtype(num_clusters: int) -> torch.dtype:
    """The dtype semantic ids are stored and kept in: int16 when they fit (below 32768), else int32."""
    return SHARD_DTYPES["semantic"] if num_clusters <= torch.iinfo(SHARD_DTYPES["semantic"]).max + 1 \
        else WIDE_SEMANTIC_DTYPE


def _narrowed(values: torch.Tensor, dtype: torch.dtype, name: str) -> torch.Tensor:
    """`values` as `dtype`, refusing ids the dtype would wrap around."""
    limits = torch.iinfo(dtype)
    if values.numel() and (values.min() < limits.min or values.max() > limits.max):
        raise DataError(f"{name} ids in [{int(values.min())}, {int(values.max())}] do not fit the shards' {dtype}")
    return values.to(dtype).contiguous()


def _corpus_settings(spec: CorpusSpec) -> dict:
    return {**asdict(spec), "path": str(Path(spec.path).expanduser().resolve())}


def _first_difference(old, new, key: str) -> str | None:
    """The dotted key where two settings values first differ, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for sub in sorted(set(old) | set(new)):
            found = _first_difference(old.get(sub), new.get(sub), f"{key}.{sub}")
            if found:
                return found
        return None
    return None if old == new else f"{key} is {old!r} there but {new!r} now"


def _claim_folder(out: Path, settings: dict) -> None:
    """Refuses a folder that holds tokens made with other settings; records `settings` for a resumed run."""
    out.mkdir(parents=True, exist_ok=True)
    existing = next((out / n for n in (INFO_FILE, PARTIAL_INFO_FILE) if (out / n).is_file()), None)
    if existing is None:
        if any(out.glob("shard-*")) or (out / KMEANS_FILE).exists():
            raise DataError(f"{out} holds shard or k-means files but no {INFO_FILE} or {PARTIAL_INFO_FILE}: they "
                             "cannot be checked against these settings; use an empty --out folder")
    else:
        try:
            recorded = json.loads(existing.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{existing}: not valid JSON ({err}); delete the folder to start over") from err
        for key in SETTINGS_KEYS:
            difference = _first_difference(recorded.get(key), settings[key], key)
            if difference:
                raise DataError(f"{out} holds tokens made with other settings: {difference}; use another output "
                                 "folder, or delete this one to start over")
    atomic_write_bytes(out / PARTIAL_INFO_FILE, _json_bytes(settings))


def _prepare_kmeans(
    out: Path, semantic: HubertSemanticTokenizer, utterances: list[Utterance], clusters: int,
    sample_size: int, iterations: int, restarts: int, seed: int, max_duration: float | None,
) -> KMeans:
    """The k-means of `out` if there is one, else `semantic.kmeans` or one fitted on a seeded sample of
    `sample_size` utterances; saved in `out`. Its features are computed one utterance at a time whatever the batch
    size: a fit is chaotic in its input (k-means++ seeding draws by cumulative distances), so features rounded
    differently in a batch could give other clusters and change every id."""
    path = out / KMEANS_FILE
    if path.is_file():
        kmeans = KMeans.load(path)
        given = semantic.kmeans
        if given is not None and not torch.equal(given.centroids.cpu().float(), kmeans.centroids):
            raise DataError(f"{path} differs from the k-means given to the semantic tokenizer; use another output "
                             "folder, or delete the file to use the given one")
        if kmeans.num_clusters != clusters:
            raise DataError(f"{path} has {kmeans.num_clusters} clusters, not kmeans_clusters={clusters}")
        return kmeans
    kmeans = semantic.kmeans
    if kmeans is None:
        rng = np.random.default_rng(seed)
        sample = sorted(rng.choice(len(utterances), min(sample_size, len(utterances)), replace=False).tolist())
        features = []
        for index in tqdm(sample, desc="k-means: HuBERT features", unit="utt"):
            try:
                features.append(semantic.features(*_load_waveform(utterances[index], max_duration)))
            except AudioError:
                continue  # reported when its shard is written
        if not features:
            raise DataError("no audio could be loaded to fit the k-means")
        frames = sum(len(f) for f in features)
        logger.info("fitting k-means (%d clusters, %d restarts) on %d frames (%.2f h) of %d of the %d utterances "
                    "(%.1f %%)", clusters, restarts, frames, frames / semantic.frame_rate / 3600, len(features),
                    len(utterances), 100 * len(features) / len(utterances))
        kmeans = KMeans(clusters, iterations, seed, restarts=restarts).fit(torch.cat(features))
        logger.info("k-means inertia %.6g, %.4g per frame", kmeans.inertia, kmeans.inertia / frames)
    atomic_write_bytes(path, kmeans.to_bytes())
    return KMeans.load(path)


def _finished_shard(out: Path, index: int, expected_ids: list[str]) -> list[dict] | None:
    """The skipped records of shard `index` when it is complete and holds what it should, else None."""
    name = shard_name(index)
    tensors_path, lines_path = out / f"{name}.safetensors", out / f"{name}.jsonl"
    if not (tensors_path.is_file() and lines_path.is_file()):
        return None
    recorded = _shard_metadata(tensors_path)
    ids = [entry["id"] for entry in _read_lines(lines_path)]
    skipped_ids = {entry["id"] for entry in recorded["skipped"]}
    if ids != recorded["ids"] or ids != [i for i in expected_ids if i not in skipped_ids]:
        raise DataError(f"{tensors_path} holds other utterances than shard {index} of this corpus should (the corpus "
                         "changed since it was written); use another output folder, or delete this one to start over")
    return recorded["skipped"]


def _load_batch(utterances: list[Utterance], max_duration: float | None, strict: bool
                ) -> tuple[dict[int, tuple[torch.Tensor, int]], dict[int, AudioError]]:
    """({position: (waveform, rate)} of those that load, {position: error} of the others); `strict` raises the
    first error instead."""
    loaded, failed = {}, {}
    for position, utterance in enumerate(utterances):
        try:
            loaded[position] = _load_waveform(utterance, max_duration)
        except AudioError as err:
            if strict:
                raise
            failed[position] = err
    return loaded, failed


def _write_shard(
    out: Path, index: int, utterances: list[Utterance], codec: EncodecCodec, semantic: HubertSemanticTokenizer,
    max_duration: float | None, strict: bool, progress: tqdm, durations: list[float], batch_size: int,
) -> list[dict]:
    """Encodes one shard's utterances, `batch_size` at a time by `durations` (longest first), and writes its two
    files in corpus order; returns the records of what failed to load."""
    encoded: dict[int, tuple[torch.Tensor, torch.Tensor, dict]] = {}
    failures: dict[int, AudioError] = {}
    for batch in _length_batches(durations, batch_size):
        loaded, failed = _load_batch([utterances[i] for i in batch], max_duration, strict)
        failures.update({batch[position]: err for position, err in failed.items()})
        if loaded:
            waveforms, rates = zip(*loaded.values())
            codes = codec.encode_batch(waveforms, rates)
            ids = semantic.encode_batch(waveforms, rates)
            for position, acoustic, semantic_ids, waveform, rate in zip(loaded, codes, ids, waveforms, rates):
                utterance = utterances[batch[position]]
                line = {"id": utterance.id, "text": utterance.text, "speaker": utterance.speaker,
                        "duration": round(waveform.numel() / rate, 6), "audio_path": utterance.audio_path}
                encoded[batch[position]] = acoustic.cpu(), semantic_ids.cpu(), line
        progress.update(len(batch))
    skipped = [{"id": utterances[i].id, "audio_path": utterances[i].audio_path, "reason": failures[i].reason}
               for i in sorted(failures)]
    acoustic, semantic_ids, lines = zip(*(encoded[i] for i in sorted(encoded))) if encoded else ((), (), ())
    tensors = {
        "acoustic": torch.cat(acoustic) if acoustic else torch.zeros(0, codec.num_levels),
        "acoustic_lengths": torch.tensor([len(codes) for codes in acoustic]),
        "semantic": torch.cat(semantic_ids) if semantic_ids else torch.zeros(0),
        "semantic_lengths": torch.tensor([len(ids) for ids in semantic_ids]),
    }
    dtypes = {**SHARD_DTYPES, "semantic": semantic_dtype(semantic.num_clusters)}
    tensors = {key: _narrowed(tensors[key], dtype, key) for key, dtype in dtypes.items()}
    # one metadata key: safetensors writes several in a random (hash) order, which would break byte identity
    metadata = {"shard": json.dumps({"ids": [line["id"] for line in lines], "skipped": skipped}, sort_keys=True)}
    name = shard_name(index)
    atomic_write_bytes(out / f"{name}.safetensors", save_safetensors(tensors, metadata=metadata))
    text = "".join(json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n" for line in lines)
    atomic_write_bytes(out / f"{name}.jsonl", text.encode())  # written last: its presence marks the shard complete
    return skipped


def tokenize_corpus(
    spec: CorpusSpec | Mapping,
    out_dir: str | Path,
    codec: EncodecCodec,
    semantic: HubertSemanticTokenizer,
    shard_size: int = 1000,
    kmeans_clusters: int = 500,
    kmeans_fraction: float = 0.1,
    kmeans_utterances: int | None = None,
    kmeans_iterations: int = 100,
    kmeans_restarts: int = 10,
    seed: int = 0,
    strict: bool = False,
    max_duration: float | None = None,
    batch_size: int = 8,
) -> Path:
    """Writes a corpus's acoustic and semantic tokens into `out_dir` (layout in the module docstring).

    The k-means is fitted on HuBERT features of seeded-random utterances, `kmeans_fraction` of the corpus
    (fairseq's HuBERT recipe fits on 10 %) or exactly `kmeans_utterances` when given, with `kmeans_restarts`
    restarts (`KMeans`), unless `out_dir/kmeans.safetensors` exists (reused) or `semantic.kmeans` is set (saved
    and used); a tokenizer with a `quantizer` fits and writes no k-means. The log says how many frames it was
    fitted on, and the file records it (`fit_frames`).
    Utterances whose audio is missing, unreadable, empty or longer than `max_duration` seconds are
    skipped and listed in `tokens.json`'s `skipped` (one warning sums them up); `strict=True` raises
    naming the file instead. A rerun resumes after the last complete shard. Returns `out_dir`.
    `batch_size` utterances of similar length are encoded at a time (see the module docstring); 1 encodes them
    one by one.
    """
    if shard_size < 1:
        raise ConfigError(f"shard_size must be at least 1, got {shard_size}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    spec = CorpusSpec.coerce(spec)
    out = Path(out_dir)
    utterances = read_corpus(spec)
    seen: set[str] = set()
    duplicates = sorted({u.id for u in utterances if u.id in seen or seen.add(u.id)})
    if duplicates:
        raise DataError(f"{spec.path}: utterance ids must be unique to resume and check shards; repeated: "
                         f"{duplicates[:5]}")
    quantized = semantic.quantizer is not None  # a trained quantizer's ids: no k-means to fit
    clusters = semantic.num_clusters if semantic.num_clusters is not None else kmeans_clusters
    settings = {
        "format_version": FORMAT_VERSION,
        "codec": codec.settings(),
        "semantic": {**semantic.settings(), "num_clusters": clusters, "kmeans": None if quantized else KMEANS_FILE},
        "corpus": _corpus_settings(spec),
        "shard_size": shard_size,
        "max_duration": max_duration,
    }
    _claim_folder(out, settings)

    check = _HeaderCheck(utterances, max_duration, strict)
    kept = check.utterances
    skipped = [{"id": u.id, "audio_path": u.audio_path, "reason": check.problems[u.id]}
               for u in utterances if u.id in check.problems]
    if not kept:
        raise DataError(f"no usable audio in {spec.path}: all {len(utterances)} utterances were skipped")
    if not 0 < kmeans_fraction <= 1:
        raise ConfigError(f"kmeans_fraction must be in (0, 1], got {kmeans_fraction}")
    sample_size = math.ceil(kmeans_fraction * len(kept)) if kmeans_utterances is None else kmeans_utterances
    if not quantized:
        semantic.kmeans = _prepare_kmeans(out, semantic, kept, clusters, sample_size, kmeans_iterations,
                                          kmeans_restarts, seed, max_duration)

    chunks = [kept[start : start + shard_size] for start in range(0, len(kept), shard_size)]
    progress = tqdm(total=len(kept), desc=f"tokenizing into {out}", unit="utt")
    shards, failed_to_load = [], []
    for index, chunk in enumerate(chunks):
        shard_skipped = _finished_shard(out, index, [u.id for u in chunk])
        if shard_skipped is None:
            durations = check.durations[index * shard_size : index * shard_size + len(chunk)]
            shard_skipped = _write_shard(out, index, chunk, codec, semantic, max_duration, strict, progress,
                                         durations, batch_size)
        else:
            progress.update(len(chunk))
        shards.append({"name": shard_name(index), "utterances": len(chunk) - len(shard_skipped)})
        failed_to_load += shard_skipped
    progress.close()
    if failed_to_load:
        logger.warning("skipped %d utterances whose audio failed to load (e.g. %s: %s); listed in %s",
                       len(failed_to_load), failed_to_load[0]["audio_path"], failed_to_load[0]["reason"],
                       out / INFO_FILE)
    info = {**settings, "shards": shards, "skipped": skipped + failed_to_load}
    atomic_write_bytes(out / INFO_FILE, _json_bytes(info))
    (out / PARTIAL_INFO_FILE).unlink(missing_ok=True)
    return out


def _read_lines(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: corrupt shard listing ({err})") from err


def _shard_metadata(path: Path) -> dict:
    try:
        with safe_open(str(path), "pt") as shard:
            return json.loads((shard.metadata() or {})["shard"])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: corrupt shard, cannot read its header ({err})") from err


def read_token_info(folder: str | Path) -> dict:
    """The `tokens.json` of a tokens folder, checked for its format version."""
    folder = Path(folder)
    path = folder / INFO_FILE
    if not folder.is_dir():
        raise FileNotFoundError(f"tokens folder {folder} not found; {RUN_HINT}")
    if not path.is_file():
        if (folder / PARTIAL_INFO_FILE).is_file():
            raise FileNotFoundError(f"{folder}: tokenization did not finish ({PARTIAL_INFO_FILE} but no {INFO_FILE}); "
                                    "run speechtrain-tokenize again with the same arguments to resume it")
        raise FileNotFoundError(f"{path} not found; {RUN_HINT}")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(info, dict) or info.get("format_version") != FORMAT_VERSION:
        version = info.get("format_version") if isinstance(info, dict) else None
        raise DataError(f"{path}: format_version {version!r}, this speechtrain reads {FORMAT_VERSION}")
    for key in ("codec", "semantic", "shards"):
        if key not in info:
            raise DataError(f"{path}: missing key {key!r}")
    return info


def _read_shard(folder: Path, entry: dict, info: dict) -> list[TokenizedUtterance]:
    tensors_path, lines_path = folder / f"{entry['name']}.safetensors", folder / f"{entry['name']}.jsonl"
    for path in (tensors_path, lines_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is listed in {folder / INFO_FILE} but missing")
    lines = _read_lines(lines_path)
    ids = _shard_metadata(tensors_path)["ids"]
    try:
        tensors = load_safetensors(tensors_path.read_bytes())
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{tensors_path}: corrupt shard ({err})") from err

    def fail(problem: str) -> ValueError:
        return ValueError(f"{tensors_path}: corrupt shard: {problem}")

    for key, dtype in SHARD_DTYPES.items():
        allowed = (dtype, WIDE_SEMANTIC_DTYPE) if key == "semantic" else (dtype,)
        if key not in tensors or tensors[key].dtype not in allowed:
            raise fail(f"expected {key} as {' or '.join(map(str, allowed))}, got "
                       f"{tensors[key].dtype if key in tensors else 'nothing'}")
    acoustic, semantic = tensors["acoustic"], tensors["semantic"]
    acoustic_lengths, semantic_lengths = tensors["acoustic_lengths"], tensors["semantic_lengths"]
    count = entry["utterances"]
    if [line.get("id") for line in lines] != ids or len(ids) != count:
        raise fail(f"{lines_path.name} lists {len(lines)} utterances, the header {len(ids)} and {INFO_FILE} {count}, "
                   "or their ids differ")
    levels = info["codec"]["num_levels"]
    if acoustic.dim() != 2 or acoustic.shape[1] != levels:
        raise fail(f"acoustic has shape {tuple(acoustic.shape)}, expected [frames, {levels}]")
    for name, lengths, rows in (("acoustic", acoustic_lengths, acoustic.shape[0]),
                                ("semantic", semantic_lengths, semantic.numel())):
        if lengths.shape != (count,) or (lengths < 0).any() or int(lengths.sum()) != rows:
            raise fail(f"{name}_lengths (sum {int(lengths.sum())}, {lengths.numel()} entries) do not match "
                       f"{rows} {name} frames of {count} utterances")
    for name, values, limit in (("acoustic", acoustic, info["codec"]["codebook_size"]),
                                ("semantic", semantic, info["semantic"]["num_clusters"])):
        if values.numel() and (values.min() < 0 or values.max() >= limit):
            raise fail(f"{name} ids outside [0, {limit})")
    # views of one int16 tensor per shard (int32 semantic ids of an older shard are narrowed once they are checked)
    acoustic_parts = acoustic.split(acoustic_lengths.tolist())
    semantic_parts = semantic.to(semantic_dtype(info["semantic"]["num_clusters"])).split(semantic_lengths.tolist())
    return [TokenizedUtterance(line["id"], line["text"], line.get("speaker"), float(line["duration"]), codes, ids)
            for line, codes, ids in zip(lines, acoustic_parts, semantic_parts)]


def read_token_shards(folder: str | Path) -> list[TokenizedUtterance]:
    """Every utterance of a tokens folder, in shard order, after checking each shard against `tokens.json`."""
    folder = Path(folder)
    info = read_token_info(folder)
    utterances = []
    for entry in tqdm(info["shards"], desc=f"reading {folder.name}", unit="shard", disable=len(info["shards"]) < 50):
        utterances += _read_shard(folder, entry, info)
    return utterances

