"""Sweeps through the real entry point: a 4-job grid and an Optuna search, each ending in a summary table."""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from PIL import Image

from speechtrain.sweeps import OptunaSweeper, search_space, write_sweep_summary

# A 50 k-parameter Whisper, two training batches and one validation batch per job: about a second each.
TINY = ["recipe=whisper_mini", "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
        "trainer.check_val_every_n_epoch=1", "task.max_new_tokens=4", "model.config.d_model=32",
        "model.config.encoder_layers=1", "model.config.decoder_layers=1", "model.config.encoder_ffn_dim=64",
        "model.config.decoder_ffn_dim=64", "data.max_batch_seconds=8", "export=false", "logger=csv",
        "~callbacks.progress_bar", "optimized_metric=val/cer"]

REPO_DIR = Path(__file__).resolve().parents[1]  # the checkout: train.py and recipes/
TESTS_DIR = Path(__file__).resolve().parent


class KillSweepAtJob(Callback):
    """A Hydra callback that SIGKILLs the sweep as job `number` starts, as a preempted or cancelled sweep dies."""

    def __init__(self, number: int) -> None:
        self.number = number

    def on_job_start(self, config, **kwargs) -> None:
        if config.hydra.job.num == self.number:
            os.kill(os.getpid(), signal.SIGKILL)


def run_sweep(*overrides: str, sweep_dir: Path, check: bool = True) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(REPO_DIR / "train.py"), "--multirun", *TINY, *overrides,
                             f"hydra.sweep.dir={sweep_dir}"], cwd=sweep_dir.parent, capture_output=True, text=True,
                            timeout=300, env=environment)
    assert result.returncode == 0 or not check, result.stderr[-3000:]
    return result


def job_metrics(sweep_dir: Path) -> dict[str, dict[str, float]]:
    return {path.parent.name: json.loads(path.read_text()) for path in sweep_dir.glob("*/metrics.json")}


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_grid_sweep_runs_each_job_in_its_folder_and_writes_the_summary(tmp_path):
    sweep_dir = tmp_path / "grid"
    result = run_sweep("task.optimizer.lr=1e-3,3e-3", "task.warmup_steps=0,5", sweep_dir=sweep_dir)
    metrics = job_metrics(sweep_dir)
    assert sorted(metrics) == ["0", "1", "2", "3"]

    rows = read_csv(sweep_dir / "summary.csv")
    assert [(r["job"], r["task.optimizer.lr"], r["task.warmup_steps"]) for r in rows] == [
        ("0", "0.001", "0"), ("1", "0.001", "5"), ("2", "0.003", "0"), ("3", "0.003", "5")]
    for row in rows:
        job = metrics[row["job"]]
        assert float(row["val/cer"]) == pytest.approx(job["val/cer"], rel=1e-5)
        assert float(row["train/loss"]) == pytest.approx(job["train/loss"], rel=1e-5)  # the other metrics too
    best = min(sorted(metrics, key=int), key=lambda job: metrics[job]["val/cer"])  # ties: the first job
    assert [r["job"] for r in rows if r["best"] == "*"] == [best]
    assert "task.lr_decay" not in rows[0]  # only the swept keys
    markdown = (sweep_dir / "summary.md").read_text()
    assert markdown.count("\n| ") == 1 + 1 + 4 and "| task.optimizer.lr | task.warmup_steps | val/cer |" in markdown
    assert "| 2 | 0.003 | 0 |" in result.stdout  # printed as well
    assert "![val/cer against the swept values](summary.png)" in markdown and "history.png" not in markdown
    plot = png(sweep_dir / "summary.png")
    assert plot.shape == (320, 800, 3) and len(np.unique(plot.reshape(-1, 3), axis=0)) > 16  # two panels, drawn


def test_a_failed_job_is_marked_in_the_summary_and_the_sweep_runs_the_others(tmp_path):
    sweep_dir = tmp_path / "grid"
    # job 1's corpus format is a configuration mistake (ConfigError), which a single run reports with exit status 1
    result = run_sweep("data.train.format=ljspeech,nonsense,ljspeech", sweep_dir=sweep_dir, check=False)
    assert sorted(job_metrics(sweep_dir)) == ["0", "2"], result.stderr[-3000:]  # the job after the failure ran too
    rows = read_csv(sweep_dir / "summary.csv")
    assert [(r["job"], r["status"]) for r in rows] == [("0", "ok"), ("1", "failed"), ("2", "ok")]
    assert rows[1]["error"].startswith("ConfigError: unknown corpus format 'nonsense'") and rows[1]["val/cer"] == ""
    assert rows[0]["error"] == rows[2]["error"] == ""
    assert "| 1 | nonsense |  |  | failed | ConfigError: unknown corpus format 'nonsense'" in (
        sweep_dir / "summary.md").read_text()
    assert result.returncode != 0  # Hydra's basic sweeper re-raises the failure once every job has run


def test_optuna_search_is_a_multirun_with_a_summary_and_the_best_trial(tmp_path):
    sweep_dir = tmp_path / "optuna"
    run_sweep("hparams_search=whisper_mini_optuna", "hydra.sweeper.n_trials=3",
              "task.optimizer.lr=tag(log, interval(1e-3, 1e-2))", "task.warmup_steps=choice(0, 3)", sweep_dir=sweep_dir)
    metrics = job_metrics(sweep_dir)
    assert sorted(metrics) == ["0", "1", "2"]
    trials = {p.parent.parent.name: yaml.safe_load(p.read_text()) for p in sweep_dir.glob("*/.hydra/overrides.yaml")}
    learning_rates = [float(o.split("=")[1]) for t in trials.values() for o in t if o.startswith("task.optimizer.lr=")]
    assert len(set(learning_rates)) == 3 and all(1e-3 <= lr <= 1e-2 for lr in learning_rates)  # command line's range

    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    best_job = min(sorted(metrics, key=int), key=lambda job: metrics[job]["val/cer"])  # ties: the first
    assert results["best_value"] == pytest.approx(metrics[best_job]["val/cer"])
    assert f"task.optimizer.lr={results['best_params']['task.optimizer.lr']}" in trials[best_job]
    assert results["n_trials"] == 3 and results["n_failed"] == 0
    rows = read_csv(sweep_dir / "summary.csv")
    assert len(rows) == 3 and {"task.optimizer.lr", "task.label_smoothing", "val/cer"} <= rows[0].keys()
    assert [r["job"] for r in rows if r["best"] == "*"] == [best_job]
    markdown = (sweep_dir / "summary.md").read_text()
    assert "(summary.png)" in markdown and "![optimisation history](history.png)" in markdown
    assert png(sweep_dir / "history.png").shape == (320, 640, 3)
    assert png(sweep_dir / "summary.png").shape == (320, 400 * 3, 3)  # lr, warm-up and label smoothing vary


def test_a_killed_optuna_study_in_sqlite_resumes_with_the_trials_still_missing(tmp_path):
    sweep_dir, database = tmp_path / "optuna", tmp_path / "study.db"
    search = ["hparams_search=whisper_mini_optuna", "hydra.sweeper.n_trials=3",
              f"hydra.sweeper.storage=sqlite:///{database}", "hydra.sweeper.study_name=lr",
              "task.optimizer.lr=tag(log, interval(1e-3, 1e-2))"]
    kill = ["+hydra.callbacks.kill._target_=test_sweeps.KillSweepAtJob", "+hydra.callbacks.kill.number=1"]
    killed = run_sweep(*search, *kill, sweep_dir=sweep_dir, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    study = optuna.load_study(study_name="lr", storage=f"sqlite:///{database}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING"]
    interrupted_lr = study.trials[1].params["task.optimizer.lr"]

    run_sweep(*search, sweep_dir=sweep_dir)
    study = optuna.load_study(study_name="lr", storage=f"sqlite:///{database}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert study.user_attrs["interrupted_trials"] == [1]  # the killed trial is not counted: 3 trials ran to the end
    assert study.trials[2].params["task.optimizer.lr"] == interrupted_lr  # the interrupted point is evaluated first
    assert sorted(job_metrics(sweep_dir)) == ["0", "2", "3"]  # job N is trial N: the resume writes new folders
    assert {t.number: t.value for t in study.trials if t.value is not None} == {
        int(job): metrics["val/cer"] for job, metrics in job_metrics(sweep_dir).items()}
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["n_trials"] == 3 and results["n_failed"] == 0


def test_a_stored_study_needs_a_name():
    with pytest.raises(ValueError, match="storage=sqlite:///s.db needs hydra.sweeper.study_name"):
        OptunaSweeper(storage="sqlite:///s.db")


def parse(*overrides: str):
    return OverridesParser.create().parse_overrides(list(overrides))


def test_search_space_maps_the_override_grammar_to_optuna():
    space, fixed = search_space(parse("a=tag(log, interval(1e-4, 1e-2))", "b=tag(int, interval(1, 8))",
                                      "c=choice(x, y)", "d=range(1, 4)", "e.f=3"))
    assert space["a"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert space["b"] == optuna.distributions.IntDistribution(1, 8)
    assert space["c"].choices == ("x", "y") and space["d"].choices == ("1", "2", "3")
    assert fixed == ["e.f=3"]
    with pytest.raises(ValueError, match="unknown tags.*squared"):
        search_space(parse("a=tag(squared, interval(0, 1))"))
    with pytest.raises(ValueError, match="nothing to search"):
        search_space(parse("e.f=3"))


def test_failed_or_valueless_trials_are_told_fail_and_the_study_goes_on():
    study = optuna.create_study(direction="minimize")
    space = {"lr": optuna.distributions.FloatDistribution(0.0, 1.0)}
    outcomes = [JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("diverged")),
                JobReturn(status=JobStatus.COMPLETED, _return_value=None),
                JobReturn(status=JobStatus.COMPLETED, _return_value=0.25)]
    for outcome in outcomes:
        OptunaSweeper._tell(study, study.ask(space), outcome)
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL", "COMPLETE"] and study.best_value == 0.25


def write_job(sweep_dir: Path, number: int, overrides: list[str], metrics: dict | None) -> None:
    hydra_dir = sweep_dir / str(number) / ".hydra"
    hydra_dir.mkdir(parents=True)
    (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (hydra_dir / "config.yaml").write_text("optimized_metric: val/acc\n")
    (hydra_dir / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {number}\n")
    if metrics is not None:
        (hydra_dir.parent / "metrics.json").write_text(json.dumps(metrics))


def test_summary_marks_the_best_by_direction_and_names_jobs_without_metrics(tmp_path, capsys):
    for number, (lr, acc) in enumerate([("0.1", 0.5), ("0.2", 0.9), ("0.3", None)]):
        write_job(tmp_path, number, [f"lr={lr}", "seed=1"], None if acc is None else {"val/acc": acc})
    for number in range(10, 12):  # job 10 sorts after job 2
        write_job(tmp_path, number, [f"lr=0.{number}", "seed=1"], {"val/acc": 0.1})
    rows = write_sweep_summary(tmp_path, direction="maximize")
    assert [r["job"] for r in rows] == [0, 1, 2, 10, 11]
    assert [r["best"] for r in rows] == ["", "*", "", "", ""]
    assert rows[2]["status"] == "no metrics.json" and rows[2]["val/acc"] is None
    assert "seed" not in rows[0]  # the same in every job: not swept
    assert "| 1 | 0.2 | 0.9 | * | ok |  | 1 |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="direction='up'"):
        write_sweep_summary(tmp_path, direction="up")
    with pytest.raises(FileNotFoundError, match="no job folders"):
        write_sweep_summary(tmp_path / "0" / ".hydra")


def test_the_summary_links_its_plot_and_without_matplotlib_says_once_that_it_has_none(tmp_path, monkeypatch, caplog):
    from speechtrain import plots

    for number, (lr, acc) in enumerate([("0.1", 0.5), ("0.2", 0.9)]):
        write_job(tmp_path, number, [f"lr={lr}"], {"val/acc": acc})
    write_sweep_summary(tmp_path, direction="maximize", verbose=False)
    assert "![val/acc against the swept values](summary.png)" in (tmp_path / "summary.md").read_text()
    assert png(tmp_path / "summary.png").shape == (320, 400, 3)

    (tmp_path / "summary.png").unlink()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    monkeypatch.setattr(plots, "_skipped", set())
    with caplog.at_level("WARNING", logger="speechtrain.plots"):
        for _ in range(2):
            write_sweep_summary(tmp_path, direction="maximize", verbose=False)
    assert "summary.png" not in (tmp_path / "summary.md").read_text() and not (tmp_path / "summary.png").exists()
    assert [r.getMessage() for r in caplog.records if r.name == "speechtrain.plots"] == [
        "matplotlib is not installed: skipping the sweep's plot of the metric against the swept values "
        "(pip install 'speechtrain[plots]')"]
