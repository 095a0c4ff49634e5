"""Activation checkpointing without FSDP (`activation_checkpointing=true`): the same gradients, fewer saved
activations, unchanged parameter names, and the run's config turns it on."""

import pytest
import torch

from speechtrain.distributed import block_classes, checkpoint_block_activations
from speechtrain.train import build, train

RECIPES = {  # recipe: overrides (Whisper with dropout, so that the recomputation must replay the same masks)
    "whisper_mini": ["model.config.dropout=0.1", "model.config.attention_dropout=0.1"],
    "bark_mini": [],
    "soundstorm_mini": [],
}


def _loss_and_gradients(task, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, int]]:
    """The task's training loss, its parameter gradients, and the bytes of activations (not parameters) that
    autograd saved for the backward pass, in all and inside the blocks."""
    saved, parameters = {"all": 0, "blocks": 0}, {p.untyped_storage().data_ptr() for p in task.parameters()}
    depth = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.untyped_storage().data_ptr() not in parameters:
            saved["all"] += tensor.untyped_storage().nbytes()
            saved["blocks"] += tensor.untyped_storage().nbytes() if depth[0] else 0
        return tensor

    blocks = [m for m in task.modules() if type(m) in block_classes(task)]
    hooks = [hook for block in blocks for hook in (
        block.register_forward_pre_hook(lambda *_: depth.__setitem__(0, depth[0] + 1)),
        block.register_forward_hook(lambda *_: depth.__setitem__(0, depth[0] - 1)))]
    task.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss, _ = task.training_loss(batch)
    loss.backward()
    for hook in hooks:
        hook.remove()
    gradients = {name: p.grad.clone() for name, p in task.named_parameters() if p.grad is not None}
    return loss.detach(), gradients, saved


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_checkpointed_blocks_give_the_same_gradients_from_fewer_saved_activations(compose, recipe, tmp_path):
    torch.manual_seed(0)
    task, datamodule = build(compose(f"recipe={recipe}", *RECIPES[recipe], output_dir=tmp_path))
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    task.train()
    names = [name for name, _ in task.named_parameters()]
    loss, gradients, saved_bytes = _loss_and_gradients(task, batch)

    assert checkpoint_block_activations(task) > 0
    assert checkpoint_block_activations(task) > 0  # a second call keeps one level of recomputation
    assert [name for name, _ in task.named_parameters()] == names
    checkpointed_loss, checkpointed_gradients, checkpointed_bytes = _loss_and_gradients(task, batch)

    assert torch.equal(checkpointed_loss, loss)
    assert checkpointed_gradients.keys() == gradients.keys()
    for name, gradient in gradients.items():
        torch.testing.assert_close(checkpointed_gradients[name], gradient, atol=1e-6, rtol=0, msg=name)
    # what the blocks keep shrinks to the inputs that the checkpoints keep
    assert checkpointed_bytes["blocks"] < 0.1 * saved_bytes["blocks"], (saved_bytes, checkpointed_bytes)
    assert checkpointed_bytes["all"] < saved_bytes["all"] - saved_bytes["blocks"] / 2, (saved_bytes, checkpointed_bytes)


def test_the_config_flag_checkpoints_the_blocks_of_a_training_run(compose, tmp_path, caplog):
    cfg = compose("recipe=whisper_mini", "activation_checkpointing=true", "trainer.max_steps=2", "logger=none",
                  "trainer.check_val_every_n_epoch=100", "export=false", output_dir=tmp_path)
    with caplog.at_level("INFO", logger="speechtrain.train"):
        metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert "activation checkpointing: 4 blocks recompute their activations" in caplog.text
