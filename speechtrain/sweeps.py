"""Hyper-parameter sweeps as Hydra multiruns: a summary table of every job, and Bayesian search with Optuna.

Grids use Hydra's basic sweeper (`python train.py -m task.optimizer.lr=1e-3,3e-3`). `OptunaSweeper` is a
Hydra sweeper over current Optuna's ask/tell interface (hydra-optuna-sweeper pins optuna<3); Hydra only
loads sweepers from the `hydra_plugins` namespace, so `hydra_plugins/speechtrain_sweepers` exposes it
as `hydra/sweeper=optuna`. Its search space uses the override grammar, in `hydra.sweeper.params` or on
the command line:
    choice(a, b, c) and range(start, stop[, step])   a categorical parameter
    interval(low, high)                               a float, uniform
    tag(log, interval(low, high))                     a float, log-uniform
    tag(int, interval(low, high)), tag(int, log, ...) an integer
Any other override is passed unchanged to every trial. Each trial is one job of the multirun with its
own folder, and returns `cfg.optimized_metric` (see `speechtrain.train`).

`SweepSummary` (a Hydra callback, on in speechtrain/conf/hydra/default.yaml) writes `summary.md` and `summary.csv`
into the sweep folder after every job and when a multirun ends: one row per job with the keys that vary between
jobs and the job's `optimized_metric` from its `metrics.json`; the CSV has every other final metric too. A job that
raised is marked `failed` with its error message (from the job folder's `job_status.json`), and the sweep goes on:
Hydra's basic sweeper re-raises the first failure only after the whole batch of jobs ran, so the multirun's exit
status is then non-zero but every other job has run and the summary is written. With matplotlib (the `plots` extra)
`summary.md` also links `summary.png`, the optimized metric against each swept key's values, and for an Optuna
search `history.png`, the optimisation history, which `OptunaSweeper` redraws after each batch of trials.

A trial of several processes (DDP, FSDP) must not be started by Lightning inside a job of the in-process (basic)
launcher: Lightning would re-run the sweep's own command line in each new process, so every rank would run the
whole multirun (and ask an Optuna study for its own trials). `TorchrunLauncher` (`hydra/launcher=torchrun`) runs
each job as its own `torch.distributed.run` process group instead, and `check_trial_launch` refuses the other way.
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
import math
import os
import re
import shlex
import subprocess
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.experimental.callback import Callback
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, RunMode, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from speechtrain.errors import ConfigError
from speechtrain.plots import history_image, plotting_available, sweep_image, write_png

log = logging.getLogger(__name__)

DIRECTIONS = ("minimize", "maximize")
JOB_STATUS_FILE = "job_status.json"  # in each multirun job's folder, written by SweepSummary when the job ends
SWEEP_PLOT, HISTORY_PLOT = "summary.png", "history.png"  # in the sweep folder, beside summary.md


# --- the summary table ----------------------------------------------------------------------------


def _read_job(job_dir: Path) -> dict[str, Any]:
    """A job folder's number, overrides, optimized metric name and final metrics (None if it wrote none)."""
    hydra_dir = job_dir / ".hydra"
    overrides = OmegaConf.load(hydra_dir / "overrides.yaml")
    job_config = OmegaConf.load(hydra_dir / "config.yaml")
    job_number = OmegaConf.load(hydra_dir / "hydra.yaml").hydra.job.get("num")
    metrics_path = job_dir / "metrics.json"
    status_path = job_dir / JOB_STATUS_FILE
    parsed = OverridesParser.create().parse_overrides([str(o) for o in overrides])
    return {
        "job": job_number,
        "dir": job_dir,
        "overrides": {o.get_key_element(): o.get_value_element_as_str() for o in parsed},
        "metric": job_config.get("optimized_metric"),
        "metrics": json.loads(metrics_path.read_text()) if metrics_path.is_file() else None,
        "status": json.loads(status_path.read_text()) if status_path.is_file() else None,
    }


def _job_status(job: dict[str, Any]) -> tuple[str, str]:
    """A job's status cell and error message: `failed` with the message of what it raised, `ok` once it wrote its
    metrics, `no metrics.json` for a job that is still running or was killed."""
    if job["status"] is not None and job["status"]["status"] == "failed":
        return "failed", job["status"]["error"]
    return ("no metrics.json", "") if job["metrics"] is None else ("ok", "")


def _one_line(message: str, limit: int = 200) -> str:
    """An error message as one table cell: newlines and pipes (which would break the Markdown table) replaced."""
    line = " ".join(message.split()).replace("|", "/")
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _format(value: Any, short: bool = False) -> str:
    """A cell: floats to 6 significant digits; with `short`, numeric override strings too (Optuna's are long)."""
    if short and isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".e") else value
        except ValueError:
            pass
    return f"{value:.6g}" if isinstance(value, float) else "" if value is None else str(value)


def write_sweep_summary(sweep_dir: str | Path, direction: str = "minimize", verbose: bool = True
                        ) -> list[dict[str, Any]]:
    """Writes `summary.md` and `summary.csv` for the jobs under `sweep_dir`, prints the table (if `verbose`),
    returns the rows.

    A row holds `job`, the swept keys (every override whose value differs between jobs; all overrides
    when there is one job), the optimized metric's value under its name, `best` ("*" on the best job
    by `direction`), `status` (ok, failed, no metrics.json), `error` (a failed job's message) and `dir`;
    the CSV adds every other metric of `metrics.json`.
    """
    if direction not in DIRECTIONS:
        raise ConfigError(f"sweep direction={direction!r}: expected one of {DIRECTIONS}")
    sweep_dir = Path(sweep_dir)
    jobs = [_read_job(path.parent.parent) for path in sweep_dir.rglob(".hydra/overrides.yaml")]
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir}: no job folders (with .hydra/overrides.yaml) to summarise")
    jobs.sort(key=lambda job: (job["job"] is None, job["job"] or 0, str(job["dir"])))

    all_keys = list(dict.fromkeys(key for job in jobs for key in job["overrides"]))
    swept = [k for k in all_keys if len({job["overrides"].get(k) for job in jobs}) > 1] if len(jobs) > 1 else all_keys
    metric_names = list(dict.fromkeys(job["metric"] for job in jobs if job["metric"]))
    other_metrics = sorted({name for job in jobs for name in job["metrics"] or {}} - set(metric_names))

    rows = []
    for job in jobs:
        metrics = job["metrics"] or {}
        row = {"job": job["job"], **{key: job["overrides"].get(key) for key in swept}}
        row |= {name: metrics.get(name) for name in metric_names}
        row["status"], row["error"] = _job_status(job)
        row["dir"] = str(job["dir"].relative_to(sweep_dir))
        row["other"] = {name: metrics.get(name) for name in other_metrics}
        rows.append(row)
    scored = [r for r in rows if len(metric_names) == 1 and _finite(r[metric_names[0]])]
    best = (min if direction == "minimize" else max)(scored, key=lambda r: r[metric_names[0]]) if scored else None
    for row in rows:
        row["best"] = "*" if row is best else ""

    columns = ["job", *swept, *metric_names, "best", "status", "error", "dir"]
    table = [columns, *[[_one_line(row[c]) if c == "error" else _format(row[c], short=True) for c in columns]
                        for row in rows]]
    markdown = "\n".join("| " + " | ".join(cells) + " |" for cells in table[:1] + [["---"] * len(columns)] + table[1:])
    title = f"Sweep {sweep_dir}: {len(rows)} jobs, {direction} {', '.join(metric_names) or '(no optimized_metric)'}"
    links = "".join(f"\n{link}\n" for link in _plot_sweep(sweep_dir, rows, swept, metric_names, best))
    (sweep_dir / "summary.md").write_text(f"# {title}\n\n{markdown}\n{links}")
    with open(sweep_dir / "summary.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(columns + other_metrics)
        for row in rows:
            writer.writerow([_format(row[c]) for c in columns] + [_format(row["other"][m]) for m in other_metrics])
    if verbose:
        print(f"{title}\n{markdown}\n(written to {sweep_dir / 'summary.md'} and summary.csv)")
    return rows


def _plot_sweep(sweep_dir: Path, rows: list[dict[str, Any]], swept: list[str], metric_names: list[str],
                best: dict[str, Any] | None) -> list[str]:
    """Markdown links to the sweep's pictures: `summary.png` (drawn here, once two jobs have a finite metric) and an
    Optuna search's `history.png` (drawn by `OptunaSweeper`)."""
    links = []
    metric = metric_names[0] if len(metric_names) == 1 else None
    scored = [row for row in rows if metric is not None and _finite(row[metric])]
    if len(scored) > 1 and swept and plotting_available("the sweep's plot of the metric against the swept values"):
        points = {key: [(str(row[key]), row[metric]) for row in scored] for key in swept}
        best_point = None if best is None else ({key: str(best[key]) for key in swept}, best[metric])
        write_png(sweep_dir / SWEEP_PLOT, sweep_image(points, metric, best_point))
        links.append(f"![{metric} against the swept values]({SWEEP_PLOT})")
    if (sweep_dir / HISTORY_PLOT).is_file():
        links.append(f"![optimisation history]({HISTORY_PLOT})")
    return links


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def write_job_status(job_dir: str | Path, job_return: JobReturn) -> None:
    """Records in `job_dir/job_status.json` whether a job completed or failed, and the message of what it raised."""
    status: dict[str, str] = {"status": "ok" if job_return.status == JobStatus.COMPLETED else "failed"}
    if job_return.status != JobStatus.COMPLETED:
        error = job_return._return_value  # the exception; `return_value` would re-raise it
        status["error"] = f"{type(error).__name__}: {error}"
    Path(job_dir, JOB_STATUS_FILE).write_text(json.dumps(status, indent=2) + "\n")


class SweepSummary(Callback):
    """Hydra callback: each multirun job's status, and the summary table of `write_sweep_summary` after every job
    (so that it exists even when a failed job makes Hydra end the multirun with an error) and when a multirun ends.

    The direction is the sweeper's (`hydra.sweeper.direction`, as `OptunaSweeper` has) or `direction`.
    Jobs are read back from their folders, so the table is the same whichever launcher ran them.
    """

    def __init__(self, direction: str = "minimize"):
        self.direction = direction

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        write_job_status(config.hydra.runtime.output_dir, job_return)
        if job_return.status != JobStatus.COMPLETED:
            log.error("job %s failed, the sweep goes on: %s", config.hydra.job.get("num"), job_return._return_value)
        write_sweep_summary(config.hydra.sweep.dir, self._direction(config), verbose=False)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            log.warning("no sweep folder %s: nothing to summarise", sweep_dir)
            return
        write_sweep_summary(sweep_dir, self._direction(config))

    def _direction(self, config: DictConfig) -> str:
        return config.hydra.sweeper.get("direction", self.direction)


# --- Optuna -----------------------------------------------------------------------------------------


def optuna_distribution(override: Override) -> Any:
    """The Optuna distribution of one sweep override (choice, range, interval with `log`/`int` tags)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    sweep = override.value()
    tags = sweep.tags
    unknown_tags = tags - {"log", "int"}
    if unknown_tags:
        raise ConfigError(f"{override.input_line}: unknown tags {sorted(unknown_tags)}; use log and/or int")
    if isinstance(sweep, ChoiceSweep | RangeSweep):
        if tags:
            raise ConfigError(f"{override.input_line}: tags apply to interval(...), not to choice or range")
        return CategoricalDistribution(list(override.sweep_string_iterator()))
    if isinstance(sweep, IntervalSweep):
        if not sweep.start < sweep.end:
            raise ConfigError(f"{override.input_line}: interval low {sweep.start} must be below high {sweep.end}")
        if "int" in tags:
            return IntDistribution(int(sweep.start), int(sweep.end), log="log" in tags)
        return FloatDistribution(sweep.start, sweep.end, log="log" in tags)
    raise ConfigError(f"{override.input_line}: Optuna cannot search {type(sweep).__name__}")


def search_space(overrides: Sequence[Override]) -> tuple[dict[str, Any], list[str]]:
    """Sweep overrides as `{key: distribution}`; every other override as a fixed `key=value` string."""
    distributions, fixed = {}, []
    for override in overrides:
        if override.is_sweep_override():
            distributions[override.get_key_element()] = optuna_distribution(override)
        else:
            fixed.append(override.input_line)
    if not distributions:
        raise ConfigError("the Optuna sweeper has nothing to search: give hydra.sweeper.params or sweep overrides "
                         "such as 'task.optimizer.lr=tag(log, interval(1e-4, 1e-2))'")
    return distributions, fixed


class OptunaSweeper(Sweeper):
    """Bayesian search: asks Optuna for `n_jobs` trials at a time, runs them as one launcher batch, tells the
    results back. A trial whose job fails or returns no finite value is told FAIL and the study goes on.

    `sampler` is an Optuna sampler's config (`_target_`), TPE with `seed` when null; `storage` an Optuna
    storage URL (e.g. sqlite:///study.db) to resume a study by `study_name`: `n_trials` counts the study's trials
    in all sweeps, so a killed sweep run again with the same storage and name runs only the trials still missing.
    A trial that a killed sweep left running is told FAIL (listed in the study's `interrupted_trials`), not
    counted, and its parameters are asked again first. Job N of the sweep folder is trial N. The best trial goes to
    `optimization_results.yaml` in the sweep folder.
    """

    def __init__(self, direction: str = "minimize", n_trials: int = 20, n_jobs: int = 1, seed: int | None = None,
                 sampler: Any = None, storage: str | None = None, study_name: str | None = None,
                 params: dict[str, str] | None = None):
        if direction not in DIRECTIONS:
            raise ConfigError(f"hydra.sweeper.direction={direction!r}: expected one of {DIRECTIONS}")
        if n_trials < 1 or n_jobs < 1:
            raise ConfigError(f"hydra.sweeper.n_trials={n_trials} and n_jobs={n_jobs} must be at least 1")
        if storage is not None and study_name is None:
            raise ConfigError(f"hydra.sweeper.storage={storage} needs hydra.sweeper.study_name: a stored study is "
                              "resumed by its name")
        self.direction, self.n_trials, self.n_jobs, self.seed = direction, n_trials, n_jobs, seed
        self.sampler, self.storage, self.study_name = sampler, storage, study_name
        self.params = dict(params or {})

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> list[JobReturn]:
        import hydra
        import optuna

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([f"{key}={value}" for key, value in self.params.items()] + arguments)
        distributions, fixed = search_space(overrides)
        sampler = self.sampler or optuna.samplers.TPESampler(seed=self.seed)
        if not isinstance(sampler, optuna.samplers.BaseSampler):  # Hydra built the sweeper's node recursively
            sampler = hydra.utils.instantiate(sampler)
        study = optuna.create_study(direction=self.direction, sampler=sampler, storage=self.storage,
                                    study_name=self.study_name, load_if_exists=self.storage is not None)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        log.info("Optuna: %d trials of %s over %s", self.n_trials, self.direction,
                 ", ".join(f"{k}: {d}" for k, d in distributions.items()))

        _fail_interrupted_trials(study)
        if _counted_trials(study):
            log.info("Optuna: study %r resumed with %d of %d trials done", self.study_name, _counted_trials(study),
                     self.n_trials)
        returns: list[JobReturn] = []
        while (missing := self.n_trials - _counted_trials(study)) > 0:
            trials = [study.ask(distributions) for _ in range(min(self.n_jobs, missing))]
            batch = [fixed + [f"{key}={trial.params[key]}" for key in distributions] for trial in trials]
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=trials[0].number)
            for trial, result in zip(trials, results, strict=True):
                self._tell(study, trial, result)
            returns += results
            _plot_history(study, self.config.get("optimized_metric") or "value", self.direction, sweep_dir)

        finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not finished:
            raise RuntimeError(f"Optuna: none of the {len(returns)} trials finished with a value; see {sweep_dir}")
        counted = _counted_trials(study)
        best = {"best_params": study.best_params, "best_value": study.best_value, "direction": self.direction,
                "n_trials": counted, "n_failed": counted - len(finished)}
        OmegaConf.save(OmegaConf.create(best), sweep_dir / "optimization_results.yaml")
        log.info("Optuna best value %.6g with %s", study.best_value, study.best_params)
        return returns

    @staticmethod
    def _tell(study: Any, trial: Any, result: JobReturn) -> None:
        from optuna.trial import TrialState

        try:
            value = result.return_value  # re-raises the job's exception if it failed
            reason = f"returned {value!r} (is optimized_metric logged by the task?)"
        except Exception as err:  # noqa: BLE001 - a failed trial must not end the study
            value, reason = None, f"failed: {err!r}"
        if _finite(value):
            study.tell(trial, float(value))
            return
        log.warning("Optuna trial %d (%s) %s; told FAIL", trial.number, " ".join(result.overrides or []), reason)
        study.tell(trial, state=TrialState.FAIL)


def _plot_history(study: Any, metric: str, direction: str, sweep_dir: Path) -> None:
    """`history.png`: the value of each of the study's completed trials by number, and the best so far."""
    from optuna.trial import TrialState

    values = [(t.number, t.value) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if values and plotting_available("the Optuna search's optimisation history"):
        write_png(sweep_dir / HISTORY_PLOT, history_image(values, metric, direction))


INTERRUPTED_TRIALS = "interrupted_trials"  # the study's user attribute: numbers of trials a killed sweep left running


def _counted_trials(study: Any) -> int:
    """Trials that ran to an end (complete, failed, pruned) in a job; not those a killed sweep left behind."""
    interrupted = set(study.user_attrs.get(INTERRUPTED_TRIALS, []))
    return sum(t.state.is_finished() and t.number not in interrupted for t in study.get_trials(deepcopy=False))


def _fail_interrupted_trials(study: Any) -> None:
    """Tells FAIL the trials a killed sweep left RUNNING (noting them in the study's `interrupted_trials`) and asks
    their parameters again first, so that a resumed study neither counts them nor loses the points they were to
    evaluate. (Assumes one sweep at a time per study, as Hydra's launchers run it.)"""
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return
    study.set_user_attr(INTERRUPTED_TRIALS, [*study.user_attrs.get(INTERRUPTED_TRIALS, []),
                                             *(t.number for t in running)])
    for trial in running:
        log.warning("Optuna: trial %d was left running by a killed sweep; told FAIL and asked again", trial.number)
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, skip_if_exists=False)


# --- launching trials of several processes ------------------------------------------------------------


def processes_per_node(devices: Any, accelerator: Any = "auto") -> int:
    """The processes Lightning runs on each node for `trainer.devices`: a count (an int or a string of digits),
    -1 or "auto" (every GPU; one process on the CPU), or device indices (a list, or a string such as "0,1")."""
    if OmegaConf.is_list(devices) or isinstance(devices, list | tuple):
        return len(devices)
    text = str(devices).strip().lower()
    if text in ("-1", "auto"):
        if str(accelerator).lower() not in ("auto", "gpu", "cuda"):
            return 1
        from lightning.fabric.accelerators.cuda import num_cuda_devices

        return max(num_cuda_devices(), 1)
    if "," in text:
        return len([index for index in text.split(",") if index.strip()])
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"trainer.devices={devices!r}: expected a count, -1, 'auto' or a list of device indices")
    return int(text)


def _launched_externally(environ: Mapping[str, str]) -> bool:
    """True in a process that a launcher started as one rank, where Lightning starts no other process: torchrun
    (and Lightning for its own children) set LOCAL_RANK and WORLD_SIZE, srun sets SLURM_NTASKS (outside an
    interactive allocation, as Lightning's SLURMEnvironment reads it)."""
    if "LOCAL_RANK" in environ or "WORLD_SIZE" in environ:
        return True
    return "SLURM_NTASKS" in environ and environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def _strategy_name(strategy: Any) -> str:
    if OmegaConf.is_dict(strategy) or isinstance(strategy, Mapping):
        return str(strategy.get("_target_", strategy))
    return str(strategy)


def _lightning_reruns_the_command(strategy: Any) -> bool:
    """Whether Lightning starts the other ranks of `trainer.strategy` by running the command line again (DDP, FSDP,
    DeepSpeed: its subprocess launcher, which in a multirun repeats the multirun) rather than by spawning or forking
    a function that runs no Hydra app (`ddp_spawn`, `ddp_fork`, `ddp_notebook`, XLA, a node whose `start_method`
    is not popen) or running one process (`single_device`)."""
    if OmegaConf.is_dict(strategy) or isinstance(strategy, Mapping):
        if str(strategy.get("_target_", "")).endswith("SingleDeviceStrategy"):
            return False
        return strategy.get("start_method", "popen") == "popen"
    name = str(strategy).lower()
    return not any(word in name for word in ("single", "spawn", "fork", "notebook", "xla"))


def check_trial_launch(cfg: DictConfig, mode: RunMode | None, environ: Mapping[str, str] | None = None) -> None:
    """Refuses a multirun job (`mode`, Hydra's run mode) whose trainer Lightning would start as several processes
    by re-running the command line: each rank would run the whole multirun (and ask a stored Optuna study for its
    own trial). Such a trial has to be its own launch, through `hydra/launcher=torchrun` or a SLURM launcher with
    one task per GPU; a rank those start (LOCAL_RANK, WORLD_SIZE or srun's variables in `environ`) passes."""
    environ = os.environ if environ is None else environ
    if mode != RunMode.MULTIRUN or _launched_externally(environ):
        return
    trainer = cfg.get("trainer") or {}
    devices, num_nodes, strategy = trainer.get("devices", 1), trainer.get("num_nodes") or 1, trainer.get("strategy")
    processes = processes_per_node(devices, trainer.get("accelerator", "auto")) * int(num_nodes)
    if processes <= 1 or not _lightning_reruns_the_command(strategy or "auto"):
        return
    raise ConfigError(
        f"trainer.devices={devices} and trainer.num_nodes={num_nodes} (strategy {_strategy_name(strategy)}) train "
        f"each trial as {processes} processes, which Lightning would start by running this multirun's command line "
        "again, so that every rank would run the whole sweep. Launch each trial as its own process group: add "
        "hydra/launcher=torchrun (one machine; hydra.launcher.nproc_per_node defaults to trainer.devices), or on "
        "SLURM hydra/launcher=submitit_slurm (pip install hydra-submitit-launcher) with one task per GPU "
        "(hydra.launcher.tasks_per_node and hydra.launcher.gpus_per_node: the GPUs per node; hydra.launcher.nodes: "
        "trainer.num_nodes)")


class TrialFailed(RuntimeError):
    """A trial's process group ended with a non-zero status, or without its metrics; the message starts with the
    cause found in its stderr and goes on with the last lines of that stderr."""


def hydra_quoted(value: str) -> str:
    """`value` as a quoted string of Hydra's override grammar, so that a path with spaces, `=` or `,` (an
    `override_dirname` subdir) reaches the child as it is."""
    escaped = re.sub(r"(\\*)'", lambda match: match.group(1) * 2 + "\\'", value)
    return "'" + re.sub(r"(\\+)$", lambda match: match.group(1) * 2, escaped) + "'"


# Hydra settings a trial's command line sets itself: a run (never a multirun) in the job's folder, with the job's
# number, whose ranks write no .hydra folder (the launcher wrote it) and run no callbacks (the launcher runs them).
_TRIAL_OWN_KEYS = ("hydra.mode", "hydra.run.dir", "hydra.sweep.dir", "hydra.output_subdir", "hydra.job.num",
                   "hydra.job.id")


def trial_arguments(hydra_cfg: DictConfig) -> list[str]:
    """The command-line arguments of a job's training script, from its Hydra config (`HydraConfig.get()` in the
    job): the multirun's config name and `--config-dir`, its Hydra overrides, then the job's own overrides,
    exactly as the basic launcher composes the job (`load_sweep_config`), then the trial's own Hydra settings."""
    arguments = [f"--config-name={hydra_cfg.job.config_name}"] if hydra_cfg.job.config_name else []
    arguments += [f"--config-dir={source.path}" for source in hydra_cfg.runtime.config_sources
                  if source.provider == "command-line"]
    parsed = OverridesParser.create().parse_overrides([str(line) for line in hydra_cfg.overrides.hydra])
    arguments += [override.input_line for override in parsed
                  if not any(override.key_or_group == key or override.key_or_group.startswith(key + ".")
                             for key in _TRIAL_OWN_KEYS)]
    arguments += [str(line) for line in hydra_cfg.overrides.task]
    return arguments + ["hydra.mode=RUN", f"hydra.run.dir={hydra_quoted(hydra_cfg.runtime.output_dir)}",
                        f"hydra.sweep.dir={hydra_quoted(os.path.join(hydra_cfg.runtime.cwd, hydra_cfg.sweep.dir))}",
                        "hydra.output_subdir=null", f"hydra.job.num={hydra_cfg.job.num}",
                        f"hydra.job.id={hydra_quoted(str(hydra_cfg.job.id))}",
                        *(f"~hydra.callbacks.{name}" for name in hydra_cfg.callbacks)]


class StderrWatch:
    """What a failed trial's message needs from its stderr, kept as it streams (a long run's whole stderr is not
    kept): its last lines, and the cause: speechtrain's one-paragraph error (as `TYPE: message`), else the last
    exception line of a traceback (not torchrun's own ChildFailedError), else the last line. Text comes in chunks;
    a progress bar's carriage returns end lines too, so that one bar does not make one line of a whole epoch."""

    def __init__(self, tail_lines: int = 40) -> None:
        self.tail: deque[str] = deque(maxlen=tail_lines)
        self.error: str | None = None
        self.exception: str | None = None
        self._partial = ""

    def feed(self, text: str) -> None:
        *lines, self._partial = re.split(r"\r\n?|\n", self._partial + text)
        for line in lines:
            self._line(line)

    def close(self) -> None:
        if self._partial:
            self._line(self._partial)
            self._partial = ""

    def _line(self, line: str) -> None:
        self.tail.append(line)
        text = re.sub(r"^\[(default)?rank\d+\]:\s?", "", line).strip()  # torchrun's prefix with --tee
        if text.startswith("speechtrain: error: "):
            match = re.fullmatch(r"speechtrain: error: (.*) \((\w+)\)\..*", text)
            self.error = f"{match.group(2)}: {match.group(1)}" if match else text.removeprefix("speechtrain: error: ")
        elif re.match(r"[A-Za-z_][\w.]*(Error|Exception|Interrupt)(:|$)", text) and "ChildFailedError" not in text:
            self.exception = text

    def cause(self) -> str:
        last = next((line.strip() for line in reversed(self.tail) if line.strip()), "nothing on stderr")
        return self.error or self.exception or last


def _run_streaming_stderr(command: list[str], cwd: str, watch: StderrWatch) -> int:
    """Runs `command`, its stdout straight to ours and its stderr through ours as it comes (progress bars
    included, as a job of the basic launcher shows them) into `watch`; returns its exit status."""
    sys.stdout.flush()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with subprocess.Popen(command, cwd=cwd, stderr=subprocess.PIPE) as process:
        try:
            while chunk := os.read(process.stderr.fileno(), 1 << 16):
                text = decoder.decode(chunk)
                sys.stderr.write(text)
                sys.stderr.flush()
                watch.feed(text)
        except BaseException:
            process.terminate()  # Ctrl+C or a kill of the sweep: the trial's ranks must not outlive it
            raise
    watch.close()
    return process.returncode


class TorchrunLauncher(Launcher):
    """A Hydra launcher that runs each job of a multirun as its own process group, one after another:
    `python -m torch.distributed.run --standalone --nproc-per-node=N SCRIPT <the job's overrides>
    hydra.run.dir=<the job's folder>`, whose ranks Lightning finds started (LOCAL_RANK), so it starts none itself.

    Only this process composes the jobs and asks the sweeper (Optuna with sqlite storage included) for them; the
    job's folder, `.hydra` files, Hydra callbacks (`SweepSummary`, `job_status.json`) and `JobReturn` are Hydra's
    own `run_job`'s, as under the basic launcher, with the training run replaced by the process group. A trial
    returns `optimized_metric` from the `metrics.json` its ranks write, or fails with `TrialFailed` and the sweep
    goes on. `nproc_per_node`: processes per trial (an int, or torchrun's "gpu"); null follows the job's
    `trainer.devices`. `script`: the training script; null runs the entry point that started the multirun.
    `torchrun_args`: more torchrun options (before the script). `stderr_tail_lines`: kept for a failure's message.
    """

    def __init__(self, nproc_per_node: int | str | None = None, script: str | None = None,
                 torchrun_args: Sequence[str] = (), stderr_tail_lines: int = 40) -> None:
        self.nproc_per_node, self.script = nproc_per_node, script
        self.torchrun_args, self.stderr_tail_lines = [str(arg) for arg in torchrun_args], stderr_tail_lines

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.entry_point = [os.path.abspath(self.script)] if self.script else _entry_point()

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info("Launching %d jobs with torchrun, each its own process group", len(job_overrides))
        runs = []
        for number, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = number
                sweep_config.hydra.job.num = number
            runs.append(run_job(hydra_context=self.hydra_context, task_function=self._run_trial, config=sweep_config,
                                job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir"))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return runs

    def trial_command(self, task_cfg: DictConfig, hydra_cfg: DictConfig) -> list[str]:
        """The command that runs one job (`task_cfg` without and `hydra_cfg` with its Hydra node) as a trial."""
        trainer = task_cfg.get("trainer") or {}
        if int(trainer.get("num_nodes") or 1) > 1:
            raise ConfigError(f"trainer.num_nodes={trainer.num_nodes}: hydra/launcher=torchrun runs each trial on "
                              "this machine; on SLURM use hydra/launcher=submitit_slurm with one task per GPU")
        nproc = self.nproc_per_node
        if nproc is None:
            nproc = processes_per_node(trainer.get("devices", 1), trainer.get("accelerator", "auto"))
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                *self.torchrun_args, *self.entry_point, *trial_arguments(hydra_cfg)]

    def _run_trial(self, task_cfg: DictConfig) -> Any:
        """The task function that `run_job` calls in place of training: the job's process group, then its metric."""
        hydra_cfg = HydraConfig.get()
        command = self.trial_command(task_cfg, hydra_cfg)
        log.info("job %s: %s", hydra_cfg.job.num, shlex.join(command))
        watch = StderrWatch(self.stderr_tail_lines)
        status = _run_streaming_stderr(command, hydra_cfg.runtime.cwd, watch)
        if status != 0:
            raise TrialFailed(f"{watch.cause()} (torchrun exited with status {status}; the end of its stderr "
                              "follows)\n" + "\n".join(watch.tail))
        metrics_path = Path(hydra_cfg.runtime.output_dir) / "metrics.json"
        try:
            metrics = json.loads(metrics_path.read_text())
        except (OSError, ValueError) as err:
            raise TrialFailed(f"the trial ended without an error but {metrics_path} cannot be read: {err}") from None
        return metrics.get(task_cfg.get("optimized_metric"))


def _entry_point() -> list[str]:
    """How torchrun runs the script that started this process: `-m MODULE` or the script's absolute path."""
    import __main__

    spec = getattr(__main__, "__spec__", None)
    return ["-m", spec.name] if spec is not None else [os.path.abspath(sys.argv[0])]
