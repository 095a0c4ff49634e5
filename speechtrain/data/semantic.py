"""Semantic tokens: k-means cluster ids of HuBERT features, as AudioLM, SoundStorm and Bark's
semantic stage use them.

HuBERT is torchaudio's architecture (`torchaudio.models.hubert_base/large/xlarge`), so the weights
are the torchaudio-format state dicts its pipelines download (`hubert_fairseq_base_ls960.pth` for
`torchaudio.pipelines.HUBERT_BASE`). Features come from transformer layer `layer` at 16 kHz, one
frame per 320 samples (50 Hz). The k-means is plain torch: k-means++ seeding then Lloyd iterations,
deterministic for a seed, saved as safetensors.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from speechtrain.data.frozen_model import WrapsFrozenModel
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


class KMeans:
    """k-means over feature vectors: k-means++ seeding, then Lloyd iterations until assignments settle.

    Deterministic for a `seed` on one device (sampling uses a seeded generator, centroid sums a
    matmul rather than atomics). A cluster that empties keeps its previous centroid.
    """

    def __init__(self, num_clusters: int, iterations: int = 50, seed: int = 0, centroids: torch.Tensor | None = None):
        if num_clusters < 1:
            raise ConfigError(f"num_clusters must be at least 1, got {num_clusters}")
        self.num_clusters = num_clusters
        self.iterations = iterations
        self.seed = seed
        self.centroids = centroids  # [num_clusters, dim] once fitted
        self.source: str | None = None  # the file name it was saved to or loaded from

    @staticmethod
    def _squared_distances(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
        """[n, dim] x [k, dim] -> [n, k]."""
        squared = features.pow(2).sum(1, keepdim=True) - 2 * features @ centroids.T + centroids.pow(2).sum(1)
        return squared.clamp_(min=0)

    def fit(self, features: torch.Tensor) -> KMeans:
        """Fits on features [n, dim] (n >= num_clusters); returns self."""
        if features.dim() != 2 or features.shape[0] < self.num_clusters:
            raise ValueError(f"k-means with {self.num_clusters} clusters needs features [n >= {self.num_clusters}, "
                             f"dim], got shape {tuple(features.shape)}; sample more utterances or use fewer clusters")
        features = features.float()
        generator = torch.Generator().manual_seed(self.seed)
        first = int(torch.randint(len(features), (1,), generator=generator))
        centroids = [features[first]]
        nearest = self._squared_distances(features, features[first][None])[:, 0]  # [n]
        for _ in range(1, self.num_clusters):
            weights = nearest.cpu().double()
            if weights.sum() <= 0:  # fewer distinct points than clusters: pick uniformly
                weights = torch.ones_like(weights)
            chosen = int(torch.multinomial(weights, 1, generator=generator))
            centroids.append(features[chosen])
            nearest = torch.minimum(nearest, self._squared_distances(features, features[chosen][None])[:, 0])
        centroids = torch.stack(centroids)  # [k, dim]

        assignments = None
        for _ in range(self.iterations):
            new_assignments = self._squared_distances(features, centroids).argmin(1)
            if assignments is not None and torch.equal(new_assignments, assignments):
                break
            assignments = new_assignments
            one_hot = F.one_hot(assignments, self.num_clusters).to(features.dtype)  # [n, k]
            counts = one_hot.sum(0)  # [k]
            sums = one_hot.T @ features  # [k, dim]
            occupied = counts > 0
            centroids = torch.where(occupied[:, None], sums / counts.clamp(min=1)[:, None], centroids)
        self.centroids = centroids.contiguous()
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
        metadata = {"kmeans": json.dumps({"iterations": self.iterations, "seed": self.seed}, sort_keys=True)}
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
        kmeans = cls(centroids.shape[0], fitted.get("iterations", 50), fitted.get("seed", 0), centroids.float())
        kmeans.source = path.name
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
    """HuBERT layer-`layer` features, then k-means ids: waveforms to LongTensor[frames] at 50 Hz.

    `checkpoint=None` gives seeded random `hubert_base` weights (tests and smoke runs; a warning
    says so); a path loads a torchaudio-format state dict, base, large or xlarge by its shapes.
    `model` injects an already built torchaudio `Wav2Vec2Model` (tests use a tiny one). `kmeans`
    may be set later (`speechtrain.data.token_shards.tokenize_corpus` fits it).
    """

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        layer: int = 6,
        kmeans: KMeans | None = None,
        model: torch.nn.Module | None = None,
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
        self.model = model.eval().requires_grad_(False)
        self.name = architecture
        self.layer = layer
        self.kmeans = kmeans
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
    def num_clusters(self) -> int | None:
        return None if self.kmeans is None else self.kmeans.num_clusters

    def settings(self) -> dict:
        """What identifies these ids; `kmeans` names the file the centroids were loaded from, if any."""
        return {"name": self.name, "sample_rate": self.sample_rate, "frame_rate": self.frame_rate,
                "layer": self.layer, "num_clusters": self.num_clusters, "checkpoint": self.checkpoint,
                "kmeans": None if self.kmeans is None else self.kmeans.source}

    @torch.no_grad()
    def features(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Layer-`layer` features of one mono waveform [samples] at `sample_rate`: Tensor [frames, dim].

        frames = floor((samples_16k - 400) / 320) + 1; audio shorter than one frame's 400 samples is
        zero-padded to one frame.
        """
        if waveform.dim() != 1 or waveform.numel() == 0:
            raise ValueError(f"expected one non-empty mono waveform [samples], got shape {tuple(waveform.shape)}")
        waveform = waveform.to(self.device, torch.float32)
        if sample_rate != SAMPLE_RATE:
            waveform = torchaudio.functional.resample(waveform, sample_rate, SAMPLE_RATE)
        if waveform.numel() < self.receptive_field:
            waveform = F.pad(waveform, (0, self.receptive_field - waveform.numel()))
        if self.normalize_waveform:
            waveform = F.layer_norm(waveform, waveform.shape)
        layers, _ = self.model.extract_features(waveform[None], num_layers=self.layer)  # each [1, frames, dim]
        return layers[-1][0]

    def encode(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Semantic ids of one waveform: LongTensor [frames] in [0, num_clusters), on the model's device."""
        if self.kmeans is None:
            raise RuntimeError("HubertSemanticTokenizer.encode needs a fitted k-means: pass kmeans= or set .kmeans")
        return self.kmeans.predict(self.features(waveform, sample_rate))
