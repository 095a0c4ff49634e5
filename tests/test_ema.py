"""EMAWeights (speechtrain/callbacks.py): the average is the EMA of the weights after each step, a resume continues
it bit for bit, validation runs on it and leaves the training weights as they were, and the export is the average."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from speechtrain.callbacks import EMAWeights
from speechtrain.cli.export import export
from speechtrain.errors import CheckpointError
from speechtrain.hub import load_bundle
from speechtrain.safe_load import load_checkpoint
from speechtrain.train import train

TRAINER = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False,
           "enable_model_summary": False, "deterministic": True}


class TinyTask(L.LightningModule):
    """A linear regression with its network in `model`, as speechtrain's tasks; `manual=True` steps two optimisers a
    batch as VITS does (global_step counts both). `validation_step` records the weights it validates."""

    def __init__(self, manual: bool = False) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 1))
        self.frozen = nn.Linear(2, 2).requires_grad_(False)  # not the model's: never averaged
        self.model[0].bias.requires_grad_(False)  # frozen: not averaged either
        self.automatic_optimization = not manual
        self.validated: list[dict[str, torch.Tensor]] = []
        self.fail_validation = False

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.model(x), y)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        if self.automatic_optimization:
            return self.loss(batch)
        for optimizer in self.optimizers():
            optimizer.zero_grad()
            self.manual_backward(self.loss(batch))
            optimizer.step()
        return None

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        if self.fail_validation:
            raise RuntimeError("validation failed")
        self.validated.append({name: p.detach().clone() for name, p in self.model.named_parameters()})
        self.log("val/loss", self.loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer | list[torch.optim.Optimizer]:
        if self.automatic_optimization:
            return torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        return [torch.optim.SGD(layer.parameters(), lr=0.1) for layer in self.model]


def loader(batches: int = 4) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batches * 2, 4, generator=generator)
    dataset = torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True) + 1.0)
    return torch.utils.data.DataLoader(dataset, batch_size=2, shuffle=False)


class WeightRecorder(L.Callback):
    """The averaged parameters (trainable ones of `model`) at the start of training and after every batch, by
    global_step, and the weights at the start of each training batch."""

    def __init__(self) -> None:
        self.after: dict[int, dict[str, torch.Tensor]] = {}
        self.before_batch: list[tuple[int, dict[str, torch.Tensor]]] = []

    @staticmethod
    def weights(pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in pl_module.model.named_parameters() if p.requires_grad}

    def on_train_start(self, trainer, pl_module) -> None:
        self.after[trainer.global_step] = self.weights(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before_batch.append((trainer.global_step, self.weights(pl_module)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after[trainer.global_step] = self.weights(pl_module)


def fit(task: L.LightningModule, ema: EMAWeights, max_steps: int, tmp_path, *callbacks: L.Callback,
        ckpt_path: str | None = None, **trainer: object) -> WeightRecorder:
    recorder = WeightRecorder()
    options = {"enable_checkpointing": False, "limit_val_batches": 0, "num_sanity_val_steps": 0, **trainer}
    L.Trainer(**TRAINER, **options, max_steps=max_steps, default_root_dir=tmp_path,
              callbacks=[ema, recorder, *callbacks]).fit(task, loader(), loader(1), ckpt_path=ckpt_path)
    return recorder


def expected_average(after: dict[int, dict[str, torch.Tensor]], decay: float, every_n_steps: int,
                     start_step: int) -> dict[str, torch.Tensor]:
    """The EMA by hand from the recorded weights: copies up to `start_step`, then an update at each step that
    reaches or passes a multiple of `every_n_steps`."""
    steps = sorted(after)
    average = {name: w.clone() for name, w in after[steps[0]].items()}
    for previous, step in zip(steps, steps[1:]):
        for name, weight in after[step].items():
            if step <= start_step:
                average[name] = weight.clone()
            elif step // every_n_steps > previous // every_n_steps:
                average[name] = decay * average[name] + (1 - decay) * weight
    return average


@pytest.mark.parametrize(("decay", "every_n_steps", "start_step"), [(0.9, 1, 0), (0.7, 2, 3)])
def test_the_average_is_the_ema_of_the_weights_after_each_step(tmp_path, decay, every_n_steps, start_step):
    torch.manual_seed(0)
    task = TinyTask()
    ema = EMAWeights(decay=decay, every_n_steps=every_n_steps, start_step=start_step)
    recorder = fit(task, ema, 8, tmp_path)  # 2 epochs of 4 batches
    assert sorted(recorder.after) == list(range(9))
    assert set(ema.shadow) == {"0.weight", "1.weight", "1.bias"}  # trainable parameters of `model` only
    expected = expected_average(recorder.after, decay, every_n_steps, start_step)
    for name, average in ema.shadow.items():
        assert average.dtype == torch.float32
        torch.testing.assert_close(average, expected[name], rtol=0, atol=1e-6)
        assert not torch.allclose(average, recorder.after[8][name], atol=1e-4)  # an average, not the last weights
    assert ema.updates == (8 if start_step == 0 else 3)  # steps 4, 6 and 8 after start_step 3


@pytest.mark.parametrize(("every_n_steps", "updates"), [(1, 4), (3, 2)])
def test_two_optimiser_steps_a_batch_update_the_average_once(tmp_path, every_n_steps, updates):
    # global_step 2, 4, 6, 8 (four batches, as VITS counts): every 3 steps updates at 4 (past 3) and 6, not at 8
    torch.manual_seed(0)
    ema = EMAWeights(decay=0.8, every_n_steps=every_n_steps)
    recorder = fit(TinyTask(manual=True), ema, 8, tmp_path)
    assert sorted(recorder.after) == [0, 2, 4, 6, 8] and ema.updates == updates
    expected = expected_average(recorder.after, 0.8, every_n_steps, 0)
    for name, average in ema.shadow.items():
        torch.testing.assert_close(average, expected[name], rtol=0, atol=1e-6)


def test_a_resume_continues_the_average_bit_for_bit(tmp_path):
    # checkpoints at the ends of epochs (4 batches each): the plain loader resumes exactly only there
    torch.manual_seed(0)
    uninterrupted = EMAWeights(decay=0.9)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", every_n_train_steps=4, save_top_k=-1,
                                  filename="step{step}", auto_insert_metric_name=False)
    first = fit(TinyTask(), uninterrupted, 8, tmp_path, checkpoints, enable_checkpointing=True)
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "step4.ckpt")
    state = checkpoint["callbacks"]["EMAWeights"]
    assert state["step"] == 4 and state["updates"] == 4 and set(state["shadow"]) == set(uninterrupted.shadow)
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in state["shadow"].values())
    assert not torch.equal(state["shadow"]["0.weight"], checkpoint["state_dict"]["model.0.weight"])

    torch.manual_seed(1)  # other initial weights: only the checkpoint can make the two runs agree
    resumed = EMAWeights(decay=0.9)
    second = fit(TinyTask(), resumed, 8, tmp_path / "resumed",
                 ckpt_path=str(tmp_path / "checkpoints" / "step4.ckpt"))
    assert all(torch.equal(second.after[8][name], weight) for name, weight in first.after[8].items())
    assert resumed.updates == uninterrupted.updates == 8
    for name, average in uninterrupted.shadow.items():
        assert torch.equal(resumed.shadow[name], average), name

    round_trip = EMAWeights(decay=0.9)
    round_trip.load_state_dict(state)
    assert round_trip.state_dict() is state  # not yet placed on a model: kept as it came


def test_validation_runs_on_the_average_and_training_continues_from_its_own_weights(tmp_path):
    torch.manual_seed(0)
    task = TinyTask()
    ema = EMAWeights(decay=0.9)
    averages = []

    class AverageAtValidation(L.Callback):
        def on_validation_epoch_start(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:
                averages.append({name: t.clone() for name, t in ema.shadow.items()})

    recorder = fit(task, ema, 8, tmp_path, AverageAtValidation(), limit_val_batches=1, num_sanity_val_steps=1)
    sanity, *validated = task.validated
    assert len(validated) == len(averages) == 2  # after each of 2 epochs
    for name, weight in recorder.after[0].items():  # the sanity check, before any step, on the training weights
        assert torch.equal(sanity[name], weight)
    for weights, average in zip(validated, averages):
        assert torch.equal(weights["0.weight"], average["0.weight"])
        assert torch.equal(weights["1.bias"], average["1.bias"])
        assert torch.equal(weights["0.bias"], task.model[0].bias)  # a frozen parameter stays as it is
    step, before = recorder.before_batch[4]  # the first batch after epoch 0's validation
    assert step == 4 and not torch.equal(averages[0]["0.weight"], recorder.after[4]["0.weight"])
    for name, weight in recorder.after[4].items():
        assert torch.equal(before[name], weight), name


def test_an_exception_in_validation_puts_the_training_weights_back(tmp_path):
    torch.manual_seed(0)
    task = TinyTask()
    task.fail_validation = True
    ema, recorder = EMAWeights(decay=0.9), WeightRecorder()
    with pytest.raises(RuntimeError, match="validation failed"):
        fit(task, ema, 8, tmp_path, recorder, limit_val_batches=1)
    assert max(recorder.after) == 4  # failed in epoch 0's validation
    trained = {name: p for name, p in task.model.named_parameters() if p.requires_grad}
    for name, p in trained.items():
        assert torch.equal(p, recorder.after[4][name]) and not torch.equal(p, ema.shadow[name]), name
    with ema.swapped_in(task.model):
        assert all(torch.equal(p, ema.shadow[name]) for name, p in trained.items())
    assert all(torch.equal(p, recorder.after[4][name]) for name, p in trained.items())


def test_the_export_holds_the_average_and_the_last_checkpoint_the_training_weights(compose, tmp_path):
    # A 50 k-parameter Whisper, 3 epochs of one batch and no validation: the checkpoint callback writes last.ckpt
    # as training ends, which must still hold the training weights.
    cfg = compose("recipe=whisper_mini", "+callbacks@callbacks.ema=ema", "callbacks.ema.decay=0.5",
                  "trainer.max_steps=3", "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1",
                  "trainer.check_val_every_n_epoch=100", "task.max_new_tokens=4", "model.config.d_model=32",
                  "model.config.encoder_layers=1", "model.config.decoder_layers=1", "model.config.encoder_ffn_dim=64",
                  "model.config.decoder_ffn_dim=64", "data.max_batch_seconds=8", "logger=none",
                  "~callbacks.learning_rate_monitor", output_dir=tmp_path)
    assert cfg.callbacks.ema._target_ == "speechtrain.callbacks.EMAWeights"
    train(cfg)
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    state = checkpoint["callbacks"]["EMAWeights"]
    assert checkpoint["global_step"] == state["step"] == 3 and state["updates"] == 3
    exported = dict(load_bundle(tmp_path / "exported")[0].named_parameters())
    assert state["shadow"].keys() <= exported.keys()
    for name, average in state["shadow"].items():
        assert torch.equal(exported[name].detach().float(), average), name
    moved = [name for name, average in state["shadow"].items()
             if not torch.equal(average, checkpoint["state_dict"][f"model.{name}"])]
    assert len(moved) > len(state["shadow"]) // 2  # the checkpoint keeps the training weights

    # speechtrain-export --ema writes the average from the checkpoint; without it, the training weights
    averaged = dict(load_bundle(export(tmp_path / "checkpoints" / "last.ckpt", tmp_path / "ema", ema=True)[0])[0]
                    .named_parameters())
    trained = dict(load_bundle(export(tmp_path / "checkpoints" / "last.ckpt", tmp_path / "plain")[0])[0]
                   .named_parameters())
    for name, average in state["shadow"].items():
        assert torch.equal(averaged[name].detach().float(), average), name
        assert torch.equal(trained[name].detach(), checkpoint["state_dict"][f"model.{name}"]), name
    plain_checkpoint = tmp_path / "plain.ckpt"
    torch.save({**checkpoint, "callbacks": {}}, plain_checkpoint)
    with pytest.raises(CheckpointError, match="no moving average"):
        export(plain_checkpoint, tmp_path / "none", ema=True)
