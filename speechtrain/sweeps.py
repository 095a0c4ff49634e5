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
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, RunMode, TaskFunction
from omegaconf import DictConfig, OmegaConf

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
        sampler = (hydra.utils.instantiate(self.sampler) if self.sampler
                   else optuna.samplers.TPESampler(seed=self.seed))
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
