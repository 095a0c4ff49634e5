"""Untrusted files never run code: a pickle that would write a marker file is refused by the discriminator loader,
by speechtrain-export and by resume, naming the file; speechtrain's own checkpoints of every bundled recipe load
with `weights_only`, export and resume; an original VITS `D_*.pth` loads with `weights_only`."""

import fractions
import pickle
import subprocess
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException

from speechtrain.checkpoint_io import AtomicCheckpointIO
from speechtrain.cli import export
from speechtrain.distributed import FullyShardedStrategy
from speechtrain.errors import CheckpointError
from speechtrain.models.vits.discriminator import WEIGHT_NORM_NAMES
from speechtrain.safe_load import CHECKPOINT_SAFE_GLOBALS, load_checkpoint, load_untrusted
from speechtrain.train import CONFIG_DIR, build, train

REPO_DIR = Path(__file__).resolve().parents[1]
BUNDLED = sorted(path.stem for path in (CONFIG_DIR / "recipe").glob("*.yaml") if "mini" in path.stem)
# tests/test_resume.py resumes (through the same plugin) and exports these; the other bundled recipes are done here.
RESUMED_IN_TEST_RESUME = ("soundstorm_mini", "vits_mini", "whisper_mini")
NOT_RESUMED_ELSEWHERE = [recipe for recipe in BUNDLED if recipe not in RESUMED_IN_TEST_RESUME]
QUIET = ["logger=none", "~callbacks.learning_rate_monitor", "export=false"]


class WritesMarker:
    """Unpickling this calls `open(marker, "w")`: what a malicious checkpoint does, harmlessly."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    """A file shaped like a Lightning checkpoint, with the marker writer inside."""
    torch.save({"state_dict": {"model.weight": torch.zeros(2)}, "epoch": 0, "global_step": 1,
                "pretrained_files": {"config.json": b"{}"}, "hyper_parameters": {"payload": WritesMarker(marker)}},
               path)
    return path


@pytest.fixture
def crafted(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "marker"
    return crafted_checkpoint(tmp_path / "shared.ckpt", marker), marker


def test_the_crafted_pickle_does_write_its_marker_when_fully_unpickled(tmp_path):
    """Guards the refusal tests below: the payload really runs when unpickled the unsafe way."""
    marker = tmp_path / "marker"
    torch.load(crafted_checkpoint(tmp_path / "evil.ckpt", marker), weights_only=False)
    assert marker.exists()


def test_discriminator_loader_refuses_a_crafted_pickle(crafted, compose, tmp_path):
    path, marker = crafted
    with pytest.raises(InstantiationException) as raised:
        build(compose("recipe=vits_mini", f"task.discriminator_checkpoint={path}", output_dir=tmp_path / "run"))
    cause = raised.value.__cause__
    assert isinstance(cause, CheckpointError), raised.value
    assert str(path) in str(cause) and "io.open" in str(cause) and "VITS discriminator" in str(cause)
    assert not marker.exists()


def test_export_refuses_a_crafted_checkpoint_and_names_it(crafted, tmp_path, capsys):
    path, marker = crafted
    with pytest.raises(SystemExit) as exited:
        export.main([str(path), str(tmp_path / "exported")])
    assert exited.value.code == 1
    message = capsys.readouterr().err
    assert str(path) in message and "io.open" in message and "--trust-checkpoint" in message
    assert not marker.exists() and not (tmp_path / "exported").exists()


def test_resume_refuses_a_crafted_checkpoint_and_names_it(crafted, compose, tmp_path):
    path, marker = crafted
    cfg = compose("recipe=whisper_mini", f"ckpt_path={path}", "trainer.max_steps=1", *QUIET,
                  output_dir=tmp_path / "run")
    with pytest.raises(CheckpointError, match="trust_checkpoint=true") as raised:
        train(cfg)
    assert str(path) in str(raised.value) and "io.open" in str(raised.value)
    assert not marker.exists()


def test_a_truncated_checkpoint_is_a_checkpoint_error_naming_the_file(tmp_path):
    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, whole)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.ckpt: cannot read"):
        load_checkpoint(truncated)


def test_other_types_need_trust_checkpoint(tmp_path):
    """A type outside the allowlist (here a harmless Fraction) is refused by name; trusting the file loads it, in the
    shared loader, in the resume plugin and from the run's `trust_checkpoint` key."""
    path = tmp_path / "fraction.ckpt"
    torch.save({"state_dict": {}, "note": fractions.Fraction(1, 3)}, path)
    for refuse in (load_checkpoint, AtomicCheckpointIO().load_checkpoint):
        with pytest.raises(CheckpointError, match=r"fraction.ckpt: refusing .*fractions\.Fraction"):
            refuse(path)
    assert load_checkpoint(path, trust=True)["note"] == fractions.Fraction(1, 3)
    assert AtomicCheckpointIO(trust_checkpoint=True).load_checkpoint(path)["note"] == fractions.Fraction(1, 3)


def test_trust_checkpoint_key_reaches_the_checkpoint_plugin(compose, tmp_path):
    import hydra

    for value in (False, True):
        cfg = compose("recipe=whisper_mini", f"trust_checkpoint={str(value).lower()}", output_dir=tmp_path)
        [plugin] = [hydra.utils.instantiate(p) for p in cfg.trainer.plugins]
        assert isinstance(plugin, AtomicCheckpointIO) and plugin.trust_checkpoint is value


def test_fsdp_refuses_a_folder_of_shards_unless_trusted(tmp_path):
    """torch.distributed.checkpoint unpickles a shard folder's `.metadata` with plain pickle: never without trust."""
    folder = tmp_path / "last.ckpt"
    folder.mkdir()
    marker = tmp_path / "marker"
    crafted_checkpoint(folder / "meta.pt", marker)
    (folder / ".metadata").write_bytes(pickle.dumps(WritesMarker(marker)))  # DCP's own metadata file
    strategy = FullyShardedStrategy()
    strategy.checkpoint_io = AtomicCheckpointIO()
    with pytest.raises(CheckpointError, match="folder of FSDP shards.*trust_checkpoint=true"):
        strategy.load_checkpoint(folder)
    assert not marker.exists()


def original_vits_discriminator_checkpoint(path: Path, discriminator: torch.nn.Module) -> OrderedDict:
    """Writes `D_*.pth` as jaywalnut310/vits `utils.save_checkpoint` does (`model`, `iteration`, `optimizer`,
    `learning_rate`), from `discriminator`'s weights under the old weight-norm names (`weight_g`, `weight_v`) with
    the AdamW state of one step (betas 0.8/0.99, eps 1e-9, as its train.py); returns the saved weights."""
    old_names = {new: old for old, new in WEIGHT_NORM_NAMES.items()}
    weights = OrderedDict()
    for key, value in discriminator.state_dict().items():
        prefix, _, last = key.rpartition(".parametrizations.weight.")
        weights[f"{prefix}.{old_names['parametrizations.weight.' + last]}" if prefix else key] = value.clone()
    parameters = [torch.nn.Parameter(value) for value in weights.values()]
    optimizer = torch.optim.AdamW(parameters, 2e-4, betas=(0.8, 0.99), eps=1e-9)
    sum(p.square().sum() for p in parameters).backward()
    optimizer.step()
    weights = OrderedDict((key, p.detach().clone()) for key, p in zip(weights, parameters))
    torch.save({"model": weights, "iteration": 1200, "optimizer": optimizer.state_dict(), "learning_rate": 2e-4},
               path)
    return weights


def test_an_original_vits_discriminator_checkpoint_loads_with_weights_only(compose, tmp_path):
    source, _ = build(compose("recipe=vits_mini", output_dir=tmp_path / "source"))
    path = tmp_path / "D_1200.pth"
    weights = original_vits_discriminator_checkpoint(path, source.discriminator)
    assert any(key.endswith(".weight_g") for key in weights) and any(key.endswith(".weight_v") for key in weights)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []
    assert load_untrusted(path)["iteration"] == 1200

    task, _ = build(compose("recipe=vits_mini", f"task.discriminator_checkpoint={path}", output_dir=tmp_path / "run"))
    loaded = {key.replace("parametrizations.weight.original0", "weight_g")
              .replace("parametrizations.weight.original1", "weight_v"): value
              for key, value in task.discriminator.state_dict().items()}
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[key], weights[key]) for key in weights)
    assert not torch.equal(loaded["discriminators.0.convs.0.bias"], source.discriminator.state_dict()[
        "discriminators.0.convs.0.bias"])  # the file's (stepped) weights, not the fresh ones


@pytest.mark.parametrize("recipe", NOT_RESUMED_ELSEWHERE)
def test_bundled_recipe_checkpoints_load_weights_only_export_and_resume(recipe, compose, tmp_path, monkeypatch):
    """An epoch of one batch, then: only allowlisted types inside, export through the safe loader, resume one more
    epoch through the checkpoint plugin."""
    overrides = [f"recipe={recipe}", *QUIET, "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=0",
                 "trainer.max_steps=-1"]
    run = tmp_path / "run"
    train(compose(*overrides, "trainer.max_epochs=1", output_dir=run))
    last = run / "checkpoints" / "last.ckpt"
    allowed = {f"{t.__module__}.{t.__qualname__}" for t in CHECKPOINT_SAFE_GLOBALS}
    assert set(torch.serialization.get_unsafe_globals_in_checkpoint(str(last))) <= allowed
    first = load_checkpoint(last)

    export.export_checkpoint(last, tmp_path / "exported")
    assert (tmp_path / "exported" / "config.json").is_file()

    loaded, load = [], AtomicCheckpointIO.load_checkpoint

    def recording_load(self, path, *args, **kwargs):
        loaded.append(str(path))
        return load(self, path, *args, **kwargs)

    monkeypatch.setattr(AtomicCheckpointIO, "load_checkpoint", recording_load)
    train(compose(*overrides, "trainer.max_epochs=2", "ckpt_path=last", output_dir=run))
    assert loaded == [str(last)]
    assert load_checkpoint(last)["global_step"] == 2 * first["global_step"] > 0


def test_no_trust_remote_code_anywhere():
    """Nothing in the package, recipes, scripts, docs or tests lets transformers run a Hub repository's code."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_DIR, capture_output=True, text=True, check=True).stdout
    this_file = Path(__file__).resolve().relative_to(REPO_DIR).as_posix()
    offending = [name for name in tracked.split()
                 if name != this_file and (REPO_DIR / name).is_file()
                 and "trust_remote_code" in (REPO_DIR / name).read_text(errors="ignore")]
    assert not offending
