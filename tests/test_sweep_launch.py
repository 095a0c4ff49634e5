"""Sweeps whose trials train as several processes: `hydra/launcher=torchrun` runs each trial as its own
torch.distributed.run process group (a run, never a child multirun), and the in-process launcher refuses such a
trial (`speechtrain.sweeps.check_trial_launch`) instead of letting Lightning re-run the multirun in every rank."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import OmegaConf

from speechtrain import sweeps
from speechtrain.errors import ConfigError
from speechtrain.sweeps import StderrWatch, TorchrunLauncher, check_trial_launch, hydra_quoted, processes_per_node

REPO_DIR = Path(__file__).resolve().parents[1]  # the checkout: train.py
# A 50 k-parameter Whisper, two training batches and one validation batch per rank, nothing exported or logged.
TINY = ["recipe=whisper_mini", "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
        "trainer.check_val_every_n_epoch=1", "task.max_new_tokens=4", "model.config.d_model=32",
        "model.config.encoder_layers=1", "model.config.decoder_layers=1", "model.config.encoder_ffn_dim=64",
        "model.config.decoder_ffn_dim=64", "data.max_batch_seconds=8", "export=false", "logger=none",
        "~callbacks.learning_rate_monitor", "~callbacks.progress_bar", "+trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false", "optimized_metric=val/cer"]

# A Hydra app that trains nothing: each rank records what it saw, rank 0 writes metrics.json, job `failing_job` fails.
RECORDING_APP = '''
import json
import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base="1.3", config_path=".", config_name="app")
def main(cfg):
    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir)
    record = {"label": cfg.label, "note": cfg.get("note"), "mode": hydra_cfg.mode.name, "num": hydra_cfg.job.num,
              "world_size": os.environ.get("WORLD_SIZE"), "callbacks": list(hydra_cfg.callbacks),
              "overrides": list(hydra_cfg.overrides.task), "hydra_folder": (folder / ".hydra").is_dir()}
    (folder / f"rank{os.environ['RANK']}.json").write_text(json.dumps(record))
    if hydra_cfg.job.num == cfg.failing_job:
        raise ValueError(f"job {hydra_cfg.job.num} fails")
    if os.environ["RANK"] == "0":
        (folder / "metrics.json").write_text(json.dumps({"score": float(len(cfg.label))}))


if __name__ == "__main__":
    main()
'''
RECORDING_APP_CONFIG = """
label: a
failing_job: 0
seed: 1  # the Optuna sweeper's
optimized_metric: score
trainer:
  devices: 2  # the launcher's default number of processes per trial
hydra:
  searchpath: [pkg://speechtrain.conf]  # hydra/launcher/torchrun.yaml
  callbacks:
    sweep_summary:
      _target_: speechtrain.sweeps.SweepSummary
"""


def run_multirun(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_DIR), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *command], cwd=cwd, capture_output=True, text=True, timeout=400,
                          env=environment)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


@pytest.mark.slow
def test_an_optuna_study_in_sqlite_runs_each_trial_as_a_process_group_that_asks_nothing(tmp_path):
    """The issue's case: with stored Optuna trials, only the launcher's process asks the study; a failed trial is
    marked failed and told FAIL, and the other trial completes."""
    (tmp_path / "app.py").write_text(RECORDING_APP)
    (tmp_path / "app.yaml").write_text(RECORDING_APP_CONFIG)
    sweep_dir, database = tmp_path / "a sweep", f"sqlite:///{tmp_path / 'study.db'}"  # the space reaches the ranks
    search = ["hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
              f"hydra.sweeper.storage={database}", "hydra.sweeper.study_name=s", "label=choice(ab, abcd)",
              "hydra.sweeper.sampler={_target_:optuna.samplers.RandomSampler,seed:3}"]  # a node, as optuna.yaml says
    result = run_multirun(["app.py", "-m", "hydra/launcher=torchrun", *search, "+note='two words=2'",
                           f"hydra.sweep.dir='{sweep_dir}'"], cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]

    study = optuna.load_study(study_name="s", storage=database)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]  # two trials in all: no rank asked for one
    label = study.trials[1].params["label"]
    assert study.trials[1].value == len(label)
    rows = read_csv(sweep_dir / "summary.csv")
    assert [(r["job"], r["status"], r["score"]) for r in rows] == [("0", "failed", ""), ("1", "ok", str(len(label)))]
    assert rows[0]["error"].startswith("TrialFailed: ValueError: job 0 fails (torchrun exited with status 1")
    assert "Traceback" in json.loads((sweep_dir / "0" / "job_status.json").read_text())["error"]  # stderr's end

    overrides = yaml.safe_load((sweep_dir / "1" / ".hydra" / "overrides.yaml").read_text())
    assert overrides == ["+note='two words=2'", f"label={label}"]
    assert yaml.safe_load((sweep_dir / "1" / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["num"] == 1
    for rank in range(2):  # each rank is a plain run in the job's folder, with exactly the job's overrides
        record = json.loads((sweep_dir / "1" / f"rank{rank}.json").read_text())
        assert record == {"label": label, "note": "two words=2", "mode": "RUN", "num": 1, "world_size": "2",
                          "callbacks": [], "overrides": overrides, "hydra_folder": True}, output[-3000:]
    assert output.count("Launching") == 1 and output.count(f"Sweep {sweep_dir}: 2 jobs") == 1  # no child multirun


@pytest.mark.slow
def test_a_grid_of_two_trials_trains_each_with_two_gloo_ranks_without_a_child_multirun(tmp_path):
    sweep_dir = tmp_path / "grid"
    result = run_multirun([str(REPO_DIR / "train.py"), "-m", *TINY, "trainer=ddp_cpu", "hydra/launcher=torchrun",
                           "task.normalizer=basic,none", f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    rows = read_csv(sweep_dir / "summary.csv")
    assert [(r["job"], r["task.normalizer"], r["status"]) for r in rows] == [("0", "basic", "ok"), ("1", "none", "ok")]
    for row in rows:
        metrics = json.loads((sweep_dir / row["job"] / "metrics.json").read_text())
        assert float(row["val/cer"]) == pytest.approx(metrics["val/cer"], rel=1e-5)
        assert (sweep_dir / row["job"] / "checkpoints" / "last.ckpt").is_file()
    assert "| 1 | none |" in (sweep_dir / "summary.md").read_text()
    assert output.count("MEMBER: 2/2") == 2  # rank 1 of each trial's two processes
    assert output.count("Launching") == 1 and output.count(f"Sweep {sweep_dir}: 2 jobs") == 1  # no child multirun


# Stands in for the call of check_trial_launch at the start of speechtrain.train._hydra_main.
GUARDED_ENTRY_POINT = """
import sys
from hydra.core.hydra_config import HydraConfig
import speechtrain.train as entry
from speechtrain.sweeps import check_trial_launch
unguarded = entry.train
def train(cfg):
    check_trial_launch(cfg, HydraConfig.get().mode)
    return unguarded(cfg)
entry.train = train
sys.argv = ["train.py", *sys.argv[1:]]
entry.main()
"""


def test_the_basic_launcher_refuses_a_trial_that_lightning_would_launch_as_two_processes(tmp_path):
    sweep_dir = tmp_path / "grid"
    result = run_multirun(["-c", GUARDED_ENTRY_POINT, "-m", *TINY, "trainer=ddp_cpu", f"hydra.sweep.dir={sweep_dir}"],
                          cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "speechtrain: error: trainer.devices=2 and trainer.num_nodes=1 (strategy ddp) train each trial as 2" \
           " processes" in result.stderr and "add hydra/launcher=torchrun" in result.stderr
    assert "Initializing distributed" not in output and output.count("Launching") == 1  # no rank started
    [row] = read_csv(sweep_dir / "summary.csv")
    assert row["status"] == "failed" and row["error"].startswith("ConfigError: trainer.devices=2")


def trainer(**values) -> dict:
    return {"trainer": {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto", **values}}


@pytest.mark.parametrize(("cfg", "environ", "refused"), [
    (trainer(devices=2, strategy="ddp"), {}, True),
    (trainer(devices=2), {}, True),  # auto: DDP
    (trainer(num_nodes=2, strategy="ddp"), {}, True),
    (trainer(accelerator="gpu", devices="0,1"), {}, True),
    (trainer(devices=2, strategy={"_target_": "speechtrain.distributed.FullyShardedStrategy"}), {}, True),
    (trainer(devices=2, strategy="ddp"), {"SLURM_NTASKS": "2", "SLURM_JOB_NAME": "bash"}, True),  # salloc: no srun
    (trainer(devices=2, strategy="ddp"), {"LOCAL_RANK": "0", "WORLD_SIZE": "2"}, False),  # a torchrun rank
    (trainer(devices=2, strategy="ddp"), {"SLURM_NTASKS": "2", "SLURM_JOB_NAME": "sweep"}, False),  # an srun task
    (trainer(), {}, False),
    (trainer(devices=-1), {}, False),  # one CPU process
    (trainer(devices=2, strategy="ddp_spawn"), {}, False),  # spawned functions run no Hydra app
    (trainer(devices=2, strategy={"_target_": "lightning.pytorch.strategies.DDPStrategy", "start_method": "spawn"}),
     {}, False),
])
def test_check_trial_launch_refuses_only_multiruns_whose_ranks_lightning_would_start(cfg, environ, refused):
    cfg = OmegaConf.create(cfg)
    check_trial_launch(cfg, RunMode.RUN, environ)  # a single run: Lightning's launcher is fine
    if not refused:
        check_trial_launch(cfg, RunMode.MULTIRUN, environ)
        return
    with pytest.raises(ConfigError, match=r"hydra/launcher=torchrun .*hydra/launcher=submitit_slurm .*one task per"):
        check_trial_launch(cfg, RunMode.MULTIRUN, environ)


def test_processes_per_node_reads_trainer_devices_as_lightning_does(monkeypatch):
    import lightning.fabric.accelerators.cuda as cuda

    monkeypatch.setattr(cuda, "num_cuda_devices", lambda: 4)
    assert [processes_per_node(d, "gpu") for d in (1, 3, "2", "1,", "0,2", [0, 1, 2], -1, "auto")] == [
        1, 3, 2, 1, 2, 3, 4, 4]
    assert processes_per_node("auto", "cpu") == processes_per_node(-1, "cpu") == 1
    with pytest.raises(ConfigError, match="trainer.devices=0"):
        processes_per_node(0)


def test_a_trial_runs_with_the_multiruns_hydra_overrides_then_the_jobs_then_its_own_settings():
    hydra_cfg = OmegaConf.create({
        "job": {"config_name": "train", "num": 3, "id": "3"}, "sweep": {"dir": "sweeps/s"},
        "runtime": {"cwd": "/work", "output_dir": "/work/sweeps/s/3", "config_sources": [
            {"path": "speechtrain.conf", "schema": "pkg", "provider": "main"},
            {"path": "/mine", "schema": "file", "provider": "command-line"}]},
        "overrides": {"hydra": ["hydra.mode=MULTIRUN", "hydra/launcher=torchrun", "hydra.sweep.dir=sweeps/s",
                                "+hydra.callbacks.kill._target_=x", "hydra.verbose=true"],
                      "task": ["recipe=whisper_mini", "task.normalizer=none"]},
        "callbacks": {"sweep_summary": {}, "kill": {}}})
    assert sweeps.trial_arguments(hydra_cfg) == [
        "--config-name=train", "--config-dir=/mine", "hydra/launcher=torchrun", "+hydra.callbacks.kill._target_=x",
        "hydra.verbose=true", "recipe=whisper_mini", "task.normalizer=none", "hydra.mode=RUN",
        "hydra.run.dir='/work/sweeps/s/3'", "hydra.sweep.dir='/work/sweeps/s'", "hydra.output_subdir=null",
        "hydra.job.num=3", "hydra.job.id='3'", "~hydra.callbacks.sweep_summary", "~hydra.callbacks.kill"]


def test_a_multi_node_trial_is_not_launched_on_one_machine():
    with pytest.raises(ConfigError, match="trainer.num_nodes=2: hydra/launcher=torchrun runs each trial on this"):
        TorchrunLauncher().trial_command(OmegaConf.create(trainer(num_nodes=2)), OmegaConf.create({}))


@pytest.mark.parametrize("value", ["/tmp/a b/0", "lr=0.1,wd=0", "it's", "back\\", "a\\'b", "cost $5"])
def test_hydra_quoted_values_parse_back_unchanged(value):
    [override] = OverridesParser.create().parse_overrides([f"hydra.run.dir={hydra_quoted(value)}"])
    assert override.value() == value


def test_the_cause_of_a_failed_trial_is_found_in_its_stderr():
    torchrun_end = ["Traceback (most recent call last):", '  File "run.py", line 994, in <module>',
                    "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ", "=" * 60,
                    "  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html"]
    speechtrain_error = ["speechtrain: error: unknown normalizer 'nonsense'; expected one of ['basic'] (ConfigError). "
                         "Check the recipe and the overrides on the command line; set SPEECHTRAIN_DEBUG=1 for the "
                         "full traceback."]
    crash = ["Epoch 0:  50%|#####     | 1/2\rEpoch 0: 100%|##########| 2/2", "Traceback (most recent call last):",
             "[rank1]: RuntimeError: NCCL timeout"]
    for lines, cause in [(speechtrain_error + torchrun_end, "ConfigError: unknown normalizer 'nonsense'; expected one "
                                                            "of ['basic']"),
                         (crash + torchrun_end, "RuntimeError: NCCL timeout"),
                         (["killed", "", "", "no newline"], "no newline"), ([], "nothing on stderr")]:
        text, watch = "\n".join(lines), StderrWatch(tail_lines=3)
        for start in range(0, len(text), 7):  # in chunks that end mid-line, as os.read returns them
            watch.feed(text[start:start + 7])
        watch.close()
        assert watch.cause() == cause
        assert list(watch.tail) == (text.replace("\r", "\n").split("\n")[-3:] if text else [])


def test_torchrun_runs_the_entry_point_that_started_the_sweep(monkeypatch):
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None)
    monkeypatch.setattr(sys, "argv", ["train.py", "-m"])
    assert sweeps._entry_point() == [os.path.abspath("train.py")]
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", type("Spec", (), {"name": "speechtrain.train"})())
    assert sweeps._entry_point() == ["-m", "speechtrain.train"]
