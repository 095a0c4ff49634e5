import pytest
import torch
from tiny_tokenizers import one_torch_thread, tiny_hubert  # noqa: F401 (an autouse fixture)

from speechtrain.data.semantic import HubertSemanticTokenizer, KMeans


def separated_clusters(points_per_cluster: int = 40) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four clusters 10 apart with spread 0.1, shuffled: (features [160, 8], labels [160], centers [4, 8])."""
    generator = torch.Generator().manual_seed(1)
    centers = 10.0 * torch.eye(4, 8)
    labels = torch.arange(4).repeat_interleave(points_per_cluster)
    features = centers[labels] + 0.1 * torch.randn(len(labels), 8, generator=generator)
    order = torch.randperm(len(labels), generator=generator)
    return features[order], labels[order], centers


def test_kmeans_recovers_separated_clusters():
    features, labels, centers = separated_clusters()
    kmeans = KMeans(4, iterations=20, seed=0).fit(features)
    predicted = kmeans.predict(features)
    mapping = {}
    for true, found in zip(labels.tolist(), predicted.tolist()):
        assert mapping.setdefault(found, true) == true  # each found cluster holds one true cluster
    assert len(mapping) == 4
    for found, true in mapping.items():
        assert (kmeans.centroids[found] - centers[true]).abs().max() < 0.1


def gaussian_blobs(seed: int, scale: float, clusters: int = 32, dim: int = 16, per_cluster: int = 100
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Features from known clusters: Gaussian blobs of spreads 0.5 to 1.5 around centres N(0, scale^2), shuffled
    (features [clusters * per_cluster, dim], labels); smaller scales overlap more."""
    generator = torch.Generator().manual_seed(seed)
    centers = scale * torch.randn(clusters, dim, generator=generator)
    spreads = 0.5 + torch.rand(clusters, generator=generator)
    labels = torch.arange(clusters).repeat_interleave(per_cluster)
    features = centers[labels] + spreads[labels, None] * torch.randn(len(labels), dim, generator=generator)
    order = torch.randperm(len(labels), generator=generator)
    return features[order], labels[order]


def inertia(features: torch.Tensor, centroids: torch.Tensor) -> float:
    return float(KMeans._squared_distances(features.double(), centroids.double()).min(1).values.sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_default_kmeans_recovers_known_clusters_as_well_as_fairseqs_minibatch_kmeans(seed):
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    from sklearn.metrics import adjusted_rand_score

    for scale in (1.0, 2.0, 3.0):
        features, labels = gaussian_blobs(seed, scale)
        ours = KMeans(32).fit(features)
        # examples/hubert/simple_kmeans/learn_kmeans.py's defaults
        fairseq = sklearn_cluster.MiniBatchKMeans(
            n_clusters=32, init="k-means++", max_iter=100, batch_size=10000, tol=0.0, max_no_improvement=100,
            n_init=20, reassignment_ratio=0.0, init_size=None, compute_labels=False, random_state=0,
        ).fit(features.numpy())
        reference = inertia(features, torch.from_numpy(fairseq.cluster_centers_))
        assert ours.inertia == pytest.approx(inertia(features, ours.centroids), rel=1e-6)
        assert ours.inertia <= 1.02 * reference, (scale, ours.inertia / reference)
        recovered = adjusted_rand_score(labels.numpy(), ours.predict(features).numpy())
        assert recovered >= adjusted_rand_score(labels.numpy(), fairseq.predict(features.numpy())) - 0.01, scale
        assert ours.fit_frames == len(features)


@pytest.mark.gpu
def test_kmeans_fits_on_the_gpu_deterministically():
    features, _ = gaussian_blobs(0, 2.0)
    first, second = (KMeans(32).fit(features.cuda()) for _ in range(2))
    assert first.centroids.is_cuda and torch.equal(first.centroids, second.centroids)
    assert first.inertia == pytest.approx(KMeans(32).fit(features).inertia, rel=0.02)


def test_kmeans_is_deterministic_per_seed_and_round_trips(tmp_path):
    features = torch.randn(300, 6, generator=torch.Generator().manual_seed(2))  # no clear clusters: the seed matters
    first, second = KMeans(7, seed=0).fit(features), KMeans(7, seed=0).fit(features)
    assert torch.equal(first.centroids, second.centroids)
    assert not torch.equal(first.centroids, KMeans(7, seed=1).fit(features).centroids)
    first.save(tmp_path / "km.safetensors")
    loaded = KMeans.load(tmp_path / "km.safetensors")
    assert loaded.num_clusters == 7 and loaded.source == "km.safetensors"
    assert torch.equal(loaded.predict(features), first.predict(features))
    with pytest.raises(ValueError, match="needs features"):
        KMeans(400).fit(features)
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="bad.safetensors"):
        KMeans.load(tmp_path / "bad.safetensors")


def test_semantic_ids_are_50_hz_cluster_ids():
    tokenizer = tiny_hubert()
    waveform = torch.randn(22050) * 0.1  # 1 s at 22.05 kHz -> 16000 samples -> (16000 - 400) // 320 + 1 frames
    features = tokenizer.features(waveform, 22050)
    assert features.shape == (49, 32) and tokenizer.frame_rate == 50
    tokenizer.kmeans = KMeans(5, seed=0).fit(features)
    ids = tokenizer.encode(waveform, 22050)
    assert ids.dtype == torch.long and ids.shape == (49,) and ids.min() >= 0 and ids.max() < 5
    assert tokenizer.encode(torch.randn(100), 16000).shape == (1,)  # shorter than one frame: padded to one
    assert tokenizer.settings() == {"name": "custom", "sample_rate": 16000, "frame_rate": 50.0, "layer": 2,
                                    "num_clusters": 5, "checkpoint": None, "kmeans": None}


def test_random_hubert_base_frames_and_width():
    tokenizer = HubertSemanticTokenizer(layer=6)
    assert tokenizer.features(torch.randn(8000) * 0.1, 16000).shape == (24, 768)


def test_bad_layer_and_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="layer=3: this HuBERT has transformer layers 1 to 2"):
        HubertSemanticTokenizer(layer=3, model=tiny_hubert().model)
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        HubertSemanticTokenizer(checkpoint=tmp_path / "nothing.pth")
    torch.save({"weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="other.pth is not a torchaudio-format HuBERT"):
        HubertSemanticTokenizer(checkpoint=tmp_path / "other.pth")
    with pytest.raises(RuntimeError, match="fitted k-means"):
        tiny_hubert().encode(torch.randn(1000), 16000)


@pytest.mark.parametrize("extractor_mode", ["group_norm", "layer_norm"])
def test_batched_features_differ_from_one_at_a_time_by_float_rounding_only(extractor_mode):
    """hubert_base's first layer normalises over time (group_norm) and runs per utterance; with "layer_norm" (large)
    every convolution is batched. Each utterance's features are within float rounding of its own, shorter than one
    frame included; the same batch gives the same bits; the ids agree (here everywhere). On a CPU, by default,
    nothing is batched: bit for bit `features`."""
    tokenizer = tiny_hubert(extractor_mode=extractor_mode)
    generator = torch.Generator().manual_seed(0)
    lengths = [100, 400, 401, 719, 720, 16000, 16001, 23456]  # 16 kHz samples
    waveforms = [0.1 * torch.randn(length, generator=generator) for length in lengths]
    batched = tokenizer.features_batch(waveforms, 16000, batch_convolutions=True)
    alone = [tokenizer.features(waveform, 16000) for waveform in waveforms]
    for features, reference in zip(batched, alone):
        assert features.shape == reference.shape
        assert (features - reference).abs().max() <= 1e-5 * reference.abs().max()
    again = tokenizer.features_batch(waveforms, 16000, batch_convolutions=True)
    assert all(torch.equal(a, b) for a, b in zip(again, batched))
    assert all(torch.equal(a, b) for a, b in zip(tokenizer.features_batch(waveforms, 16000), alone))
    tokenizer.kmeans = KMeans(8, seed=0).fit(torch.cat(alone))
    assert all(torch.equal(tokenizer.kmeans.predict(a), tokenizer.kmeans.predict(b)) for a, b in zip(batched, alone))
    ids = tokenizer.encode_batch(waveforms, 16000)
    assert all(torch.equal(a, tokenizer.encode(w, 16000)) for a, w in zip(ids, waveforms))
    mixed = tokenizer.features_batch(waveforms[-2:], [16000, 22050], batch_convolutions=True)
    assert mixed[1].shape == tokenizer.features(waveforms[-1], 22050).shape


def test_random_hubert_base_batches_within_rounding():
    tokenizer = HubertSemanticTokenizer(layer=6)
    generator = torch.Generator().manual_seed(0)
    waveforms = [0.1 * torch.randn(length, generator=generator) for length in (8000, 5555, 6400)]
    for features, waveform in zip(tokenizer.features_batch(waveforms, 16000, batch_convolutions=True), waveforms):
        reference = tokenizer.features(waveform, 16000)
        assert (features - reference).abs().max() <= 1e-5 * reference.abs().max()
