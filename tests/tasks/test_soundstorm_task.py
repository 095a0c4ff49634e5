import functools

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from speechtrain.models.soundstorm import SoundStorm, SoundStormConfig
from speechtrain.safe_load import load_checkpoint
from speechtrain.tasks.checkpointing import PRETRAINED_FILES_KEY
from speechtrain.tasks.soundstorm import SoundStormTask

K, Q = 8, 2


def tiny_model(**overrides) -> SoundStorm:
    values = dict(codebook_size=K, num_quantizers=Q, dim=32, depth=1, heads=2, dim_head=16, conv_kernel_size=3,
                  num_semantic_tokens=6, semantic_rate=25.0, acoustic_rate=50.0)
    return SoundStorm(SoundStormConfig(**{**values, **overrides}))


def make_batch(lengths=(16, 11), seed=0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    frames = max(lengths)
    frame_mask = torch.arange(frames)[None, :] < torch.tensor(lengths)[:, None]
    semantic_mask = torch.arange(frames // 2)[None, :] < (torch.tensor(lengths)[:, None] + 1) // 2
    codes = torch.randint(0, K, (len(lengths), frames, Q), generator=generator).masked_fill(~frame_mask[..., None], 0)
    semantic_ids = torch.randint(0, 6, (len(lengths), frames // 2), generator=generator).masked_fill(~semantic_mask, 0)
    return {"codes": codes, "frame_mask": frame_mask, "semantic_ids": semantic_ids, "semantic_mask": semantic_mask,
            "ids": [f"utt{i}" for i in range(len(lengths))], "texts": ["" for _ in lengths]}


def fixed_loss(task: SoundStormTask, batch: dict, seeds=range(8)) -> float:
    task.eval()
    with torch.no_grad():
        return sum(float(task.model_step(batch, torch.Generator().manual_seed(s))[0]) for s in seeds) / len(seeds)


def test_overfits_one_batch_with_self_conditioning():
    torch.manual_seed(0)
    task = SoundStormTask(tiny_model(self_condition=True), functools.partial(torch.optim.AdamW, lr=3e-3))
    batch = make_batch()
    before = fixed_loss(task, batch)
    optimizer = torch.optim.AdamW(task.model.parameters(), lr=3e-3)
    task.train()
    for _ in range(150):
        loss, accuracy = task.model_step(batch)
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = fixed_loss(task, batch)
    assert after < 0.5 * before, (before, after)


def test_padding_never_reaches_the_loss():
    """Changing the padded codes changes nothing: they are neither scored nor seen."""
    torch.manual_seed(0)
    task = SoundStormTask(tiny_model(), functools.partial(torch.optim.AdamW)).eval()
    batch = make_batch()
    other = {**batch, "codes": batch["codes"].clone()}
    other["codes"][1, 11:] = 5
    first = task.model_step(batch, torch.Generator().manual_seed(3))
    second = task.model_step(other, torch.Generator().manual_seed(3))
    assert torch.allclose(first[0], second[0], atol=1e-6) and torch.equal(first[1], second[1])


class FakeCodec:
    sample_rate = 800

    def __init__(self):
        self.calls = []

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        self.calls.append(codes.clone())
        return torch.zeros(1, 1, codes.shape[1] * 16)


def test_trainer_fit_validates_at_a_fixed_seed_samples_audio_and_checkpoints(tmp_path):
    torch.manual_seed(0)
    codec = FakeCodec()
    task = SoundStormTask(tiny_model(), functools.partial(torch.optim.AdamW, lr=1e-3), warmup_steps=2, codec=codec,
                          sample_steps=(2, 1), prompt_seconds=0.1)
    batches = [make_batch(seed=s) for s in range(2)]
    loader = DataLoader(batches, batch_size=None)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0)
    trainer.fit(task, loader, loader)
    assert torch.isfinite(trainer.callback_metrics["val/loss"])
    first = trainer.validate(task, loader, verbose=False)[0]["val/loss"]
    second = trainer.validate(task, loader, verbose=False)[0]["val/loss"]
    assert first == second  # same corruption every time
    generated, reference = codec.calls[0], codec.calls[1]
    assert generated.shape == reference.shape == (1, 16, Q)
    assert torch.equal(generated[0, :5], batches[0]["codes"][0, :5])  # 0.1 s prompt = 5 frames at 50 Hz
    assert torch.equal(reference[0], batches[0]["codes"][0])
    assert sorted(p.name for p in (tmp_path / "samples").rglob("*.wav")) == ["utt0_generated.wav",
                                                                            "utt0_reference.wav"]
    mels = sorted((tmp_path / "samples").rglob("*.png"))
    assert [p.name for p in mels] == ["utt0_generated_mel.png", "utt0_reference_mel.png"]
    # the fake codec's 256-sample clips are shorter than one 1024-sample window: drawn zero-padded to it
    assert all(np.asarray(Image.open(p)).shape[:2] == (80, 1024 // 256) for p in mels)
    checkpoint = load_checkpoint(next(tmp_path.rglob("*.ckpt")))
    assert b'"model_type": "soundstorm"' in checkpoint[PRETRAINED_FILES_KEY]["config.json"]
    assert not any("codec" in key for key in checkpoint["state_dict"])


@pytest.mark.gpu
def test_the_training_step_never_waits_for_the_device():
    """Every decision of the step is drawn on the CPU: under CUDA's sync debug mode a forward and backward of the
    masked loss (self-conditioned: its coin too) run without one synchronisation."""
    task = SoundStormTask(tiny_model(self_condition=True), functools.partial(torch.optim.AdamW, lr=1e-3),
                          self_condition_prob=1.0).cuda()
    batch = {key: value.cuda() if isinstance(value, torch.Tensor) else value for key, value in make_batch().items()}
    task.model_step(batch)[0].backward()  # the first call initialises cuBLAS and the kernels' caches
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss, accuracy = task.model_step(batch)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss) and 0 <= float(accuracy) <= 1
