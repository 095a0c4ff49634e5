"""Every family under DDP and FSDP on two gloo processes, validation on: each run trains, validates (sample
generation and decoding included), checkpoints, resumes from that checkpoint and exports a folder that loads in
transformers (SoundStorm: in speechtrain). Slow: four two-process runs per family."""

import json
import math
from pathlib import Path

import pytest
import torch
from test_distributed import VITS_TINY, assert_trained_in_sync, train_two_processes

from speechtrain.cli.export import export
from speechtrain.hub import load_bundle

QUIET = ["logger=none", "~callbacks.learning_rate_monitor", "+trainer.enable_progress_bar=false",
         "~callbacks.progress_bar", "+trainer.enable_model_summary=false", "trainer.precision=32-true"]
# One epoch of two batches per rank, then a validation batch per rank (which writes checkpoints/last.ckpt).
EPOCH = ["+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "trainer.check_val_every_n_epoch=1"]
FSDP = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", "trust_checkpoint=true"]

# recipe -> (its overrides, the transformers class that loads its export or None for speechtrain's own loader)
FAMILIES = {
    "whisper_mini": ([], "WhisperForConditionalGeneration"),
    "s2t_mini": ([], "Speech2TextForConditionalGeneration"),
    "vits_mini": (VITS_TINY, "VitsModel"),
    "soundstorm_mini": (["task.sample_every_n_epochs=1"], None),  # generates a sample at every validation
    "bark_mini_coarse": ([], "BarkCoarseModel"),
}


def train_and_resume(tmp_path: Path, recipe: str, *overrides: str) -> tuple[list[dict], list[dict], Path]:
    """Records of each rank after one epoch and after the resumed second one, and the run folder."""
    run_dir = tmp_path / "run"
    common = [f"recipe={recipe}", *QUIET, *EPOCH, *overrides]
    first = train_two_processes(tmp_path / "first", *common, "trainer.max_epochs=1", "export=false",
                                base=[], run_dir=run_dir)
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    resumed = train_two_processes(tmp_path / "resumed", *common, "trainer.max_epochs=2", "ckpt_path=last",
                                  base=[], run_dir=run_dir)
    return first, resumed, run_dir


def effective_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each parametrised weight (weight norm) as the weight it computes, not its factors."""
    from torch.nn.utils import parametrize

    weights = dict(model.state_dict())
    for module_name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for attribute in module.parametrizations:
                prefix = f"{module_name}.parametrizations.{attribute}."
                weights = {k: v for k, v in weights.items() if not k.startswith(prefix)}
                weights[f"{module_name}.{attribute}"] = getattr(module, attribute).detach()
    return weights


def check_run(first: list[dict], resumed: list[dict], run_dir: Path, hf_class: str | None) -> None:
    assert_trained_in_sync(first)
    assert_trained_in_sync(resumed)
    for before, after in zip(first, resumed, strict=True):  # the resume starts from the checkpoint's weights
        assert after["global_step"] == 2 * before["global_step"] > 0
        for name, value in before["final"].items():
            assert torch.equal(after["initial"][name], value), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "val/loss" in metrics and all(math.isfinite(value) for value in metrics.values()), metrics

    exported = run_dir / "exported"
    model, _, _ = load_bundle(exported)
    final, _, _ = load_bundle(exported)
    final.load_state_dict({name.removeprefix("model."): value for name, value in resumed[0]["final"].items()
                           if name.startswith("model.")})
    ours, expected = effective_weights(model), effective_weights(final)
    assert ours.keys() == expected.keys()
    for name, value in ours.items():  # VITS's weight norm is refolded on export: equal up to rounding
        torch.testing.assert_close(value, expected[name], atol=1e-6, rtol=1e-5, msg=name)
    if hf_class is not None:
        import transformers

        _, info = getattr(transformers, hf_class).from_pretrained(exported, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(FAMILIES))
def test_every_family_trains_validates_resumes_and_exports_under_ddp_and_fsdp(tmp_path, recipe):
    overrides, hf_class = FAMILIES[recipe]
    ddp_first, ddp_resumed, ddp_dir = train_and_resume(tmp_path / "ddp", recipe, *overrides)
    check_run(ddp_first, ddp_resumed, ddp_dir, hf_class)

    fsdp_first, fsdp_resumed, fsdp_dir = train_and_resume(tmp_path / "fsdp", recipe, *overrides, *FSDP)
    check_run(fsdp_first, fsdp_resumed, fsdp_dir, hf_class)
    assert (fsdp_dir / "checkpoints" / "last.ckpt").is_dir()  # one shard file per rank
    if recipe != "soundstorm_mini":  # DDP draws self-conditioning per rank, FSDP once for all (the same passes)
        for name, expected in ddp_first[0]["final"].items():
            if name.endswith("attention.k_proj.bias"):  # VITS: softmax cancels a key bias, so its gradient is
                continue  # rounding noise, which Adam scales up to full steps of either sign
            torch.testing.assert_close(fsdp_first[0]["final"][name], expected, atol=2e-5, rtol=1e-4, msg=name)

    # speechtrain-export reads the folder of shards in one process: the weights of the run's own export
    (from_shards,) = export(fsdp_dir / "checkpoints" / "last.ckpt", tmp_path / "from_shards", trust_checkpoint=True)
    ours, _, _ = load_bundle(from_shards)
    theirs, _, _ = load_bundle(fsdp_dir / "exported")
    for name, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[name], value), name
