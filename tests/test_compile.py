"""`compile=...`: torch.compile of every block, in place. The same losses, gradients and cached decoding as eager,
unchanged parameter names, and the run's config turns it on, also under DDP and FSDP. The tests compile with the
`aot_eager` backend (Dynamo's tracing and AOTAutograd's graphs, no code generation: seconds instead of a minute per
block class on two cores); bench/compile.py measures inductor's steps."""

import copy

import pytest
import torch
from test_distributed import train_two_processes
from test_distributed_families import EPOCH, FSDP, QUIET

from speechtrain.decoding import greedy_decode
from speechtrain.distributed import compile_blocks
from speechtrain.errors import ConfigError
from speechtrain.models.bark import generate_coarse
from speechtrain.train import _compile_options, build, train

TRACED = {"backend": "aot_eager"}
RECIPES = ["whisper_mini", "bark_mini_coarse", "soundstorm_mini"]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch (Dynamo's caches are per process)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _built(compose, recipe, tmp_path):
    torch.manual_seed(0)
    task, datamodule = build(compose(f"recipe={recipe}", output_dir=tmp_path))
    datamodule.setup("fit")
    return task, next(iter(datamodule.train_dataloader()))


def _loss_and_gradients(task, batch):
    task.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    loss, _ = task.training_loss(batch)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in task.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("recipe", RECIPES)
def test_compiled_blocks_give_the_same_loss_and_gradients(compose, recipe, tmp_path):
    task, batch = _built(compose, recipe, tmp_path)
    eager, _ = _built(compose, recipe, tmp_path)  # built twice from one seed (SoundStorm's codec cannot be copied)
    task.train(), eager.train()
    names = list(task.state_dict())
    assert compile_blocks(task, TRACED) > 0
    assert list(task.state_dict()) == names  # compiled in place: no _orig_mod. prefixes in checkpoints or exports
    expected_loss, expected_gradients = _loss_and_gradients(eager, batch)
    for _ in range(2):  # the first call compiles, the second runs the compiled graphs
        loss, gradients = _loss_and_gradients(task, batch)
        torch.testing.assert_close(loss, expected_loss, atol=1e-5, rtol=0)
        assert gradients.keys() == expected_gradients.keys()
        for name, gradient in expected_gradients.items():
            torch.testing.assert_close(gradients[name], gradient, atol=1e-5, rtol=1e-4, msg=name)


def test_compiled_decoders_decode_with_the_kv_cache_as_eager(compose, tmp_path):
    task, batch = _built(compose, "whisper_mini", tmp_path)
    model = task.model.eval()
    eager = copy.deepcopy(model)
    compile_blocks(model, TRACED)
    prefix = list(task.tokenizer.prefix_ids)
    arguments = (batch["input_features"], batch["attention_mask"], prefix, task.tokenizer.eos_id, 12)
    with torch.no_grad():
        expected = greedy_decode(eager, *arguments)
        assert greedy_decode(model, *arguments) == expected
    assert max(len(ids) for ids in expected) > len(prefix) + 4  # several cached steps, the key length growing
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 3  # encoder, prefill and cached decoder steps


def test_compiled_bark_generates_its_coarse_windows_as_eager(compose, tmp_path):
    task, _ = _built(compose, "bark_mini_coarse", tmp_path)
    model = task.model.eval()
    eager = copy.deepcopy(model)
    compile_blocks(model, TRACED)
    semantic = torch.randint(0, 100, (2, 30), generator=torch.Generator().manual_seed(0))
    expected, _ = generate_coarse(eager, semantic)
    generated, _ = generate_coarse(model, semantic)
    assert torch.equal(generated, expected) and generated.shape[1] > 60  # two windows, each a fresh cache


def test_compile_options_from_the_config():
    assert _compile_options(False) is None and _compile_options(None) is None
    assert _compile_options(True) == {} and _compile_options("max-autotune") == {"mode": "max-autotune"}
    assert _compile_options({"backend": "aot_eager", "dynamic": True}) == {"backend": "aot_eager", "dynamic": True}
    with pytest.raises(ConfigError, match=r"unknown torch.compile option\(s\) \['speed'\]"):
        _compile_options({"speed": 11})
    with pytest.raises(ConfigError, match="compile must be false, true, a torch.compile mode or a mapping"):
        _compile_options(3)


def test_the_config_compiles_the_blocks_of_a_training_run(compose, tmp_path, caplog):
    cfg = compose("recipe=whisper_mini", "compile={backend: aot_eager}", "trainer.max_steps=2", "logger=none",
                  "trainer.check_val_every_n_epoch=100", output_dir=tmp_path)
    with caplog.at_level("INFO", logger="speechtrain.train"):
        metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert "torch.compile: 4 blocks compiled ({'backend': 'aot_eager'})" in caplog.text
    exported = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert not any("_orig_mod" in name for name in exported)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_compiled_blocks_train_and_validate_under_ddp_and_fsdp_as_eager(tmp_path, strategy):
    """Two gloo ranks, one epoch of two steps and a validation batch (greedy decoding with the KV cache): the
    compiled run ends where the eager one does."""
    common = ["recipe=whisper_mini", *QUIET, *EPOCH, "trainer.max_epochs=1", "export=false",
              *(FSDP if strategy == "fsdp" else [])]
    eager = train_two_processes(tmp_path / "eager", *common, base=[])
    compiled = train_two_processes(tmp_path / "compiled", *common, "compile={backend: aot_eager}", base=[])
    for rank in range(2):
        assert compiled[rank]["final"].keys() == eager[rank]["final"].keys()
        for name, weight in eager[rank]["final"].items():
            torch.testing.assert_close(compiled[rank]["final"][name], weight, atol=2e-5, rtol=0, msg=name)
