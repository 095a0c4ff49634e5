"""Semantic tokens: ids of HuBERT features, as AudioLM, SoundStorm and Bark's semantic stage use them: k-means
cluster ids (speechtrain fits the k-means), or the ids of a trained quantizer that a family supplies (Bark's, in the
registry's `semantic_quantizers`), whose ids mean what a pretrained model expects.

HuBERT is torchaudio's architecture (`torchaudio.models.hubert_base/large/xlarge`), so the weights
are the torchaudio-format state dicts its pipelines download (`hubert_fairseq_base_ls960.pth` for
`torchaudio.pipelines.HUBERT_BASE`). Features come from transformer layer `layer` at 16 kHz, one
frame per 320 samples (50 Hz). The k-means is plain torch: restarts of greedy k-means++ seeding then Lloyd
iterations, on the features' device, deterministic for a seed, saved as safetensors.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
import torchaudio
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from speechtrain.data.frozen_model import WrapsFrozenModel, right_padded, sample_rate_of_each
from speechtrain.errors import CheckpointError, ConfigError
from speechtrain.safe_load import load_untrusted

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
RANDOM_INIT_SEED = 0
ARCHITECTURES = {  # (embed dim, layers) -> builder name; large and xlarge take layer-normed waveforms
    (768, 12): "hubert_base",
    (1024, 24): "hubert_large",
    (1280, 48): "hubert_xlarge",
}
NORMALIZED_WAVEFORM = {"hubert_base": False, "hubert_large": True, "hubert_xlarge": True}


class SemanticQuantizer(Protocol):
    """A trained head from HuBERT features to ids (what a family's `semantic_quantizers` loader returns)."""

    num_clusters: int  # how many ids
    input_size: int  # the feature width it reads
    hubert_layer: int  # the HuBERT layer it was trained on
    bark_compatible: bool  # its ids are Bark's own

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """features [frames, input_size] -> LongTensor [frames]."""

    def settings(self) -> dict:
        """What identifies its ids (name, checkpoint file and hash, sizes)."""

    def to(self, device: torch.device | str) -> SemanticQuantizer: ...


class KMeans:
    """k-means over feature vectors, with restarts. Each of `restarts` runs seeds with greedy k-means++ (the best of
    `seeding_trials` candidates per centroid, by default 3 x scikit-learn's 2 + ln k) on `init_samples` random
    frames (scikit-learn's MiniBatchKMeans default at fairseq's batch size), then runs Lloyd iterations on every
    frame until the assignments settle, the inertia improves by less than `tolerance` (relative) or `iterations`
    are done; the run of lowest inertia is kept (`inertia` and `fit_frames` say what it reached, on how much).
    fairseq's HuBERT recipe fits MiniBatchKMeans with 20 seedings and mini-batch updates; these full restarts reach
    at least its inertia (tests/data/test_semantic.py).

    Runs on the features' device (a GPU for a corpus-sized fit), in chunks of `chunk` frames. Deterministic for a
    `seed` on one device: every random draw comes from a seeded CPU generator, and centroid sums are matmuls rather
    than atomics. A cluster that empties keeps its previous centroid.
    """

    def __init__(self, num_clusters: int, iterations: int = 100, seed: int = 0, centroids: torch.Tensor | None = None,
                 restarts: int = 10, init_samples: int = 30_000, seeding_trials: int | None = None,
                 tolerance: float = 1e-4, chunk: int = 16_384):
        if num_clusters < 1:
            raise ConfigError(f"num_clusters must be at least 1, got {num_clusters}")
        if restarts < 1 or iterations < 0:
            raise ConfigError(f"k-means needs restarts >= 1 and iterations >= 0, got {restarts} and {iterations}")
        self.num_clusters = num_clusters
        self.iterations = iterations
        self.seed = seed
        self.restarts, self.init_samples, self.seeding_trials = restarts, init_samples, seeding_trials
        self.tolerance, self.chunk = tolerance, chunk
        self.centroids = centroids  # [num_clusters, dim] once fitted
        self.inertia: float | None = None  # sum of squared distances to the nearest centroid, after fit
        self.fit_frames: int | None = None
        self.source: str | None = None  # the file name it was saved to or loaded from

    @staticmethod
    def _squared_distances(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
        """[n, dim] x [k, dim] -> [n, k]."""
        squared = features.pow(2).sum(1, keepdim=True) - 2 * features @ centroids.T + centroids.pow(2).sum(1)
        return squared.clamp_(min=0)

    def _assign(self, features: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(nearest centroid [n], inertia: the float64 sum of the squared distances to it)."""
        nearest, distances = [], []
        for part in features.split(self.chunk):
            distance, index = self._squared_distances(part, centroids).min(1)
            nearest.append(index)
            distances.append(distance.double().sum())
        return torch.cat(nearest), torch.stack(distances).sum()

    def _means(self, features: torch.Tensor, assignments: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
        """The mean of each cluster's frames [k, dim] (the previous centroid for an empty cluster)."""
        sums = torch.zeros_like(centroids)
        counts = torch.zeros(self.num_clusters, dtype=features.dtype, device=features.device)
        for part, labels in zip(features.split(self.chunk), assignments.split(self.chunk)):
            one_hot = F.one_hot(labels, self.num_clusters).to(features.dtype)  # [chunk, k]
            sums += one_hot.T @ part
            counts += one_hot.sum(0)
        return torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids)

    def _seed_centroids(self, features: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Greedy k-means++ on a random subset of `init_samples` frames: [k, dim]. Draws on the CPU, computes on the
        features' device, reads nothing back."""
        device, k = features.device, self.num_clusters
        if len(features) > self.init_samples:
            features = features[torch.randperm(len(features), generator=generator)[: self.init_samples].to(device)]
        trials = self.seeding_trials or 3 * (2 + int(math.log(k)))
        first = torch.randint(len(features), (1,), generator=generator).to(device)
        uniforms = torch.rand(k, trials, generator=generator, dtype=torch.float64).to(device)
        centroids = [features[first]]  # each [1, dim]
        nearest = self._squared_distances(features, centroids[0])[:, 0].double()  # [n]
        for step in range(1, k):
            cumulative = nearest.cumsum(0)
            candidates = torch.searchsorted(cumulative, uniforms[step] * cumulative[-1]).clamp_(max=len(features) - 1)
            reach = torch.minimum(nearest[None], self._squared_distances(features[candidates], features).double())
            best = reach.sum(1).argmin()  # the candidate that lowers the potential most; [trials, n] -> []
            nearest = reach[best]
            centroids.append(features[candidates[best]][None])
        return torch.cat(centroids)

    def _lloyd(self, features: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, float]:
        assignments, inertia = self._assign(features, centroids)
        for _ in range(self.iterations):
            centroids = self._means(features, assignments, centroids)
            new_assignments, new_inertia = self._assign(features, centroids)
            settled = torch.equal(new_assignments, assignments) or bool(inertia - new_inertia
                                                                        <= self.tolerance * new_inertia)
            assignments, inertia = new_assignments, new_inertia
            if settled:
                break
        return centroids, float(inertia)

    def fit(self, features: torch.Tensor) -> KMeans:
        """Fits on features [n, dim] (n >= num_clusters), on their device; returns self."""
        if features.dim() != 2 or features.shape[0] < self.num_clusters:
            raise ValueError(f"k-means with {self.num_clusters} clusters needs features [n >= {self.num_clusters}, "
                             f"dim], got shape {tuple(features.shape)}; sample more utterances or use fewer clusters")
        features = features.float()
        generator = torch.Generator().manual_seed(self.seed)
        best = None
        for _ in range(self.restarts):
            centroids, inertia = self._lloyd(features, self._seed_centroids(features, generator))
            if best is None or inertia < best[1]:
                best = centroids, inertia
        self.centroids, self.inertia = best[0].contiguous(), best[1]
        self.fit_frames = len(features)
        return self

    def predict(self, features: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """Nearest-centroid ids: features [n, dim] -> LongTensor [n] (on the features' device)."""
        if self.centroids is None:
            raise RuntimeError("KMeans.predict before fit() or load()")
        if features.dim() != 2 or features.shape[1] != self.centroids.shape[1]:
            raise ValueError(f"expected features [n, {self.centroids.shape[1]}], got shape {tuple(features.shape)}")
        self.centroids = centroids = self.centroids.to(features.device)  # moved once, not per call
        return torch.cat([self._squared_distances(part.float(), centroids).argmin(1)
                          for part in features.split(chunk)]) if len(features) else features.new_zeros(0).long()

    def to_bytes(self) -> bytes:
        """The safetensors file `save` writes (a `centroids` tensor), as bytes."""
        if self.centroids is None:
            raise RuntimeError("KMeans.save before fit()")
        # one metadata key: safetensors writes several in a random (hash) order, which would break byte identity
        fitted = {"iterations": self.iterations, "seed": self.seed, "restarts": self.restarts,
                  "fit_frames": self.fit_frames, "inertia": self.inertia}
        metadata = {"kmeans": json.dumps(fitted, sort_keys=True)}
        return save({"centroids": self.centroids.detach().cpu().contiguous()}, metadata=metadata)

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.to_bytes())
        self.source = Path(path).name

    @classmethod
    def load(cls, path: str | Path) -> KMeans:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"k-means file {path} not found")
        try:
            with safe_open(str(path), "pt") as handle:
                fitted = json.loads((handle.metadata() or {}).get("kmeans", "{}"))
                centroids = handle.get_tensor("centroids")
        except (SafetensorError, OSError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path}: not a k-means safetensors file with a 'centroids' tensor ({err})") from err
        if centroids.dim() != 2:
            raise CheckpointError(f"{path}: centroids must be [clusters, dim], got shape {tuple(centroids.shape)}")
        kmeans = cls(centroids.shape[0], fitted.get("iterations", 50), fitted.get("seed", 0), centroids.float(),
                     fitted.get("restarts", 1))
        kmeans.fit_frames, kmeans.inertia, kmeans.source = fitted.get("fit_frames"), fitted.get("inertia"), path.name
        return kmeans


def _hubert_from_checkpoint(checkpoint: str | Path) -> tuple[torch.nn.Module, str]:
    """Builds the torchaudio HuBERT that matches the state dict's shapes and loads it."""
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"HuBERT checkpoint {path} not found; give a torchaudio-format state dict such as "
                                "hubert_fairseq_base_ls960.pth (what torchaudio.pipelines.HUBERT_BASE downloads)")
    state = load_untrusted(path, "HuBERT state dict")
    if not isinstance(state, dict) or "encoder.feature_projection.projection.weight" not in state:
        raise CheckpointError(f"{path} is not a torchaudio-format HuBERT state dict "
                         "(no 'encoder.feature_projection.projection.weight')")
    state = {k: v for k, v in state.items() if not k.startswith("aux.")}  # an ASR head, not needed for features
    embed_dim = state["encoder.feature_projection.projection.weight"].shape[0]
    num_layers = len({k.split(".")[3] for k in state if k.startswith("encoder.transformer.layers.")})
    architecture = ARCHITECTURES.get((embed_dim, num_layers))
    if architecture is None:
        raise CheckpointError(f"{path}: a HuBERT with {num_layers} layers of width {embed_dim} is none of "
                         f"{sorted(ARCHITECTURES.values())}")
    model = getattr(torchaudio.models, architecture)()
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: does not match torchaudio's {architecture} ({err})") from err
    return model, architecture


class HubertSemanticTokenizer(WrapsFrozenModel):
    """HuBERT layer-`layer` features, then k-means or quantizer ids: waveforms to LongTensor[frames] at 50 Hz.

    `checkpoint=None` gives seeded random `hubert_base` weights (tests and smoke runs; a warning
    says so); a path loads a torchaudio-format state dict, base, large or xlarge by its shapes.
    `model` injects an already built torchaudio `Wav2Vec2Model` (tests use a tiny one). `kmeans`
    may be set later (`speechtrain.data.token_shards.tokenize_corpus` fits it); a `quantizer` replaces
    the k-means (nothing is fitted) and must read this HuBERT's feature width.
    """

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        layer: int = 6,
        kmeans: KMeans | None = None,
        model: torch.nn.Module | None = None,
        quantizer: SemanticQuantizer | None = None,
    ):
        if model is not None:
            architecture = "custom"
        elif checkpoint is not None:
            model, architecture = _hubert_from_checkpoint(checkpoint)
        else:
            architecture = "hubert_base"
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                model = torchaudio.models.hubert_base()
        if checkpoint is None:
            logger.warning("HuBERT has RANDOM weights (no checkpoint given): its semantic ids mean nothing; "
                           "fine for tests and smoke runs only")
        num_layers = len(model.encoder.transformer.layers)
        if not 1 <= layer <= num_layers:
            raise ConfigError(f"layer={layer}: this HuBERT has transformer layers 1 to {num_layers}")
        if kmeans is not None and quantizer is not None:
            raise ConfigError("give the semantic tokenizer a k-means or a quantizer, not both")
        width = model.encoder.feature_projection.projection.out_features
        if quantizer is not None and quantizer.input_size != width:
            raise ConfigError(f"the semantic quantizer reads {quantizer.input_size}-wide features, this HuBERT "
                              f"({architecture}) gives {width}; use the HuBERT the quantizer was trained on")
        self.model = model.eval().requires_grad_(False)
        self.name = architecture
        self.layer = layer
        self.kmeans = kmeans
        self.quantizer = quantizer
        self.normalize_waveform = NORMALIZED_WAVEFORM.get(architecture, False)
        self.checkpoint = None if checkpoint is None else str(Path(checkpoint).expanduser().resolve())
        convs = [block.conv for block in model.feature_extractor.conv_layers]
        self.hop_length = math.prod(conv.stride[0] for conv in convs)
        receptive_field, stride = 1, 1
        for conv in convs:
            receptive_field += (conv.kernel_size[0] - 1) * stride
            stride *= conv.stride[0]
        self.receptive_field = receptive_field  # samples one frame sees (400 for HuBERT)

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def frame_rate(self) -> float:
        return SAMPLE_RATE / self.hop_length

    @property
    def id_head(self) -> KMeans | SemanticQuantizer | None:
        """What turns features into ids: the quantizer when there is one, else the k-means (None before a fit)."""
        return self.kmeans if self.quantizer is None else self.quantizer

    @property
    def num_clusters(self) -> int | None:
        return None if self.id_head is None else self.id_head.num_clusters

    def to(self, device: torch.device | str) -> HubertSemanticTokenizer:
        super().to(device)
        if self.quantizer is not None:
            self.quantizer.to(device)
        return self

    def settings(self) -> dict:
        """What identifies these ids; `kmeans` names the file the centroids were loaded from, if any; with a
        quantizer, its settings and whether its ids are Bark's (`bark_compatible`)."""
        settings = {"name": self.name, "sample_rate": self.sample_rate, "frame_rate": self.frame_rate,
                    "layer": self.layer, "num_clusters": self.num_clusters, "checkpoint": self.checkpoint,
                    "kmeans": None if self.kmeans is None else self.kmeans.source}
        if self.quantizer is not None:
            settings.update(kmeans=None, quantizer=self.quantizer.settings(),
                            bark_compatible=bool(self.quantizer.bark_compatible))
        return settings

    def _prepared(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """One mono waveform as HuBERT reads it: float32 at 16 kHz on the model's device, at least one frame long,
        layer-normed for large and xlarge."""
        waveform = self.mono_at_model_rate(waveform, sample_rate)
        if waveform.numel() < self.receptive_field:
            waveform = F.pad(waveform, (0, self.receptive_field - waveform.numel()))
        if self.normalize_waveform:
            waveform = F.layer_norm(waveform, waveform.shape)
        return waveform

    @torch.no_grad()
    def features(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Layer-`layer` features of one mono waveform [samples] at `sample_rate`: Tensor [frames, dim].

        frames = floor((samples_16k - 400) / 320) + 1; audio shorter than one frame's 400 samples is
        zero-padded to one frame.
        """
        layers, _ = self.model.extract_features(self._prepared(waveform, sample_rate)[None],
                                                num_layers=self.layer)  # each [1, frames, dim]
        return layers[-1][0]

    @torch.no_grad()
    def features_batch(self, waveforms: Sequence[torch.Tensor], sample_rates: int | Sequence[int],
                       batch_convolutions: bool | None = None) -> list[torch.Tensor]:
        """`features` of several waveforms, the convolutional feature extractor batched when `batch_convolutions`
        (by default on an accelerator, not on a CPU, where a padded batch's activations leave the cache: 1.8 times
        slower on the mini corpus): the same up to float rounding.

        The convolutions have no padding, so a right-padded batch gives each utterance its own frames, but a
        GroupNorm (hubert_base's first layer) normalises over the whole time axis: the layers up to the last one
        with a GroupNorm run per utterance. The batched layers may still round differently (kernels choose their
        blocking by shape): random hubert_base weights gave the same bits as one at a time on the mini corpus on
        a CPU, the narrow test model differs by about 1e-6. The transformer runs per utterance: padded, with an
        attention mask, its positional convolution and attention round differently (up to 2e-6 on the mini
        corpus), and one utterance alone is bit for bit `features`.
        """
        rates = sample_rate_of_each(waveforms, sample_rates)
        if batch_convolutions is None:
            batch_convolutions = self.device.type != "cpu"
        if len(waveforms) < 2 or not batch_convolutions:
            return [self.features(waveform, rate) for waveform, rate in zip(waveforms, rates)]
        prepared = [self._prepared(waveform, rate) for waveform, rate in zip(waveforms, rates)]
        conv_layers = self.model.feature_extractor.conv_layers
        alone = 1 + max((i for i, layer in enumerate(conv_layers) if isinstance(layer.layer_norm, torch.nn.GroupNorm)),
                        default=-1)
        starts = []
        for waveform in prepared:
            x = waveform[None, None]  # [1, 1, samples]
            for layer in conv_layers[:alone]:
                x, _ = layer(x, None)
            starts.append(x[0])  # [channels, steps]
        lengths = torch.tensor([start.shape[-1] for start in starts], device=self.device)
        x = right_padded(starts)  # [batch, channels, steps]
        for layer in conv_layers[alone:]:
            x, lengths = layer(x, lengths)
        features = []
        for row, frames in enumerate(lengths.tolist()):
            # [1, channels, frames] -> [1, frames, channels], laid out as the feature extractor leaves it
            own = x[row : row + 1, :, :frames].contiguous().transpose(1, 2)
            features.append(self.model.encoder.extract_features(own, None, self.layer)[-1][0])
        return features

    def _head(self) -> KMeans | SemanticQuantizer:
        head = self.id_head
        if head is None:
            raise RuntimeError("HubertSemanticTokenizer.encode needs a fitted k-means or a quantizer: pass kmeans= "
                               "or quantizer=, or set .kmeans")
        return head

    def encode(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Semantic ids of one waveform: LongTensor [frames] in [0, num_clusters), on the model's device."""
        return self._head().predict(self.features(waveform, sample_rate))

    def encode_batch(self, waveforms: Sequence[torch.Tensor], sample_rates: int | Sequence[int]) -> list[torch.Tensor]:
        """`encode` of several waveforms (`features_batch`); the k-means or quantizer reads each utterance alone (a
        quantizer's LSTM reads one utterance as one sequence)."""
        head = self._head()
        return [head.predict(features) for features in self.features_batch(waveforms, sample_rates)]
