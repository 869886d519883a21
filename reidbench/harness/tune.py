"""Sweeps on Ray Tune: a grid of (method, ablation, hyperparameters) x datasets x seeds.

Each trial is a *function* trainable (Ray 2.60 / Train V2 rejects a TorchTrainer
passed to ``Tuner``) that calls ``train_run``: one worker trains in-process (no
worker-group start-up), more workers build a ``TorchTrainer`` inside the trial with
``TuneReportCallback``. Every trial logs to the sweep's MLflow experiment, created
before the trials start, under docs/design.md's names and tags.

Resumability: the Tune experiment lives at ``<output_dir>/<experiment>/tune/<experiment>`` (no
timestamps). ``--resume`` restores it with ``Tuner.restore``: finished trials are not
re-run; unfinished and errored ones continue from their last epoch checkpoint in the
same MLflow run (``train_run(resume=True)``). Runs left RUNNING by a killed driver are
marked KILLED first, and re-opened by the trial that continues them.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..config import flatten

SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class Trial:
    """One grid point before seeds and datasets are crossed in."""

    method: str
    ablation: str = "default"
    params: dict = field(default_factory=dict)  # method params overrides (``params.<key>``)
    overrides: tuple[str, ...] = ()  # any other run-config ``key=value``


def ablation_grid(method: str, rows: dict[str, dict]) -> list[Trial]:
    """One trial per named ablation row, e.g. ``{"no_attention": {"attention": "none"}}``."""
    return [Trial(method, name, dict(params)) for name, params in rows.items()]


def param_grid(method: str, axes: dict[str, Sequence], fixed: dict | None = None) -> list[Trial]:
    """The cross product of hyperparameter values; ablation names read ``key=value,key=value``."""
    keys = list(axes)
    trials = []
    for values in itertools.product(*(axes[k] for k in keys)):
        params = {**(fixed or {}), **dict(zip(keys, values))}
        trials.append(Trial(method, ",".join(f"{k}={v}" for k, v in zip(keys, values)), params))
    return trials


def expand(trials: Iterable[Trial], datasets: Sequence[str], seeds: Sequence[int]) -> list[dict]:
    """Trials x datasets x seeds as Tune grid points (plain dicts)."""
    points = []
    for trial, dataset, seed in itertools.product(trials, datasets, seeds):
        overrides = [f"method={trial.method}", f"tracking.ablation={trial.ablation}", f"data.dataset={dataset}",
                     f"seed={seed}", *(f"params.{k}={_yaml(v)}" for k, v in flatten(trial.params).items()),
                     *trial.overrides]
        points.append({"name": f"{trial.method}/{trial.ablation}/{dataset}/{seed}", "overrides": overrides})
    return points


def select_rows(trials: Sequence[Trial], rows: str | None = None, compare: str | None = None) -> list[Trial]:
    """``--rows`` and ``--compare``: the trials whose ``method/ablation`` matches one of the
    comma-separated fnmatch patterns in ``rows`` (all of them when None), then each method named
    in ``compare`` as a default-ablation trial, unless the grid holds it already. A pattern that
    matches no row, or an unknown method, is an error that lists what exists."""
    import fnmatch

    from ..methods import list_methods

    trials = list(trials)
    names = [f"{t.method}/{t.ablation}" for t in trials]
    if rows is not None:
        patterns = [p.strip() for p in rows.split(",") if p.strip()]
        unmatched = [p for p in patterns if not fnmatch.filter(names, p)]
        if not patterns or unmatched:
            raise ValueError(f"--rows {','.join(unmatched) or repr(rows)} matches no row of this sweep; "
                             f"its rows: {', '.join(names)}")
        trials = [t for t, n in zip(trials, names) if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    for method in [m.strip() for m in (compare or "").split(",") if m.strip()]:
        if method not in list_methods():
            raise ValueError(f"--compare {method}: no such method; registered: {', '.join(list_methods())}")
        if not any(t.method == method and t.ablation == "default" for t in trials):
            trials.append(Trial(method))
    return trials


def _yaml(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _trial_trainable(config: dict) -> None:
    """A Tune trial: one ``train_run``, reporting every epoch and the final test metrics,
    and where the trial's time went: ``trial_seconds`` (imports included),
    ``train_loop_seconds`` and ``overhead_seconds`` (what is neither training nor
    validation nor the test evaluation: imports, data and model set-up, MLflow, Tune's
    reporting). A multi-worker trial reports its epochs through Ray Train, so only its
    ``trial_seconds`` is known here."""
    started = time.perf_counter()
    import ray.tune

    from .api import train_run
    from .run_config import build_run_config

    cfg = build_run_config(overrides=[*config["base"], *config["point"]["overrides"]])
    spent = {"epoch_seconds": 0.0, "val_seconds": 0.0}

    def report(metrics: dict) -> None:
        for key in spent:
            spent[key] += metrics.get(key, 0.0)
        ray.tune.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))})

    metrics = train_run(cfg, resume=True, on_epoch=report, in_tune=True)
    final = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    final["trial_seconds"] = time.perf_counter() - started
    if spent["epoch_seconds"] > 0:
        final["train_loop_seconds"] = spent["epoch_seconds"]
        final["overhead_seconds"] = (final["trial_seconds"] - spent["epoch_seconds"] - spent["val_seconds"]
                                     - final.get("test_seconds", 0.0))
    ray.tune.report(final)


def connect_ray() -> None:
    """Join the running cluster (``ray submit``, ``ray start``) or start a local one."""
    import ray

    if ray.is_initialized():
        return
    try:
        ray.init(address="auto", log_to_driver=False)
    except (ConnectionError, RuntimeError):
        ray.init(log_to_driver=False, include_dashboard=False)


def close_stale_runs(base: list[str], runs_dir: Path) -> int:
    """Mark this sweep's RUNNING runs KILLED (their trials are gone); return how many. Only runs
    whose run folder lies under ``runs_dir`` are this sweep's: another sweep logging to the same
    experiment from another ``--output-dir`` may be running now."""
    from .run_config import build_run_config
    from .tracking import client_for, experiment_id, tracking_uri

    cfg = build_run_config(overrides=base)
    client = client_for(tracking_uri(cfg))
    exp_id = experiment_id(client, cfg.tracking.experiment)
    prefix = str(runs_dir) + os.sep
    stale = [run for run in client.search_runs([exp_id], filter_string="attributes.status = 'RUNNING'",
                                               max_results=10000)
             if run.data.tags.get("run_dir", "").startswith(prefix)]
    for run in stale:
        client.set_terminated(run.info.run_id, status="KILLED")
    return len(stale)


class SweepStopped(Exception):
    """A SIGTERM stopped the sweep; its Tune state and checkpoints are kept for ``--resume``."""

    def __init__(self, signum: int, closed: int) -> None:
        super().__init__(f"{signal.Signals(signum).name} received: the trials were stopped, {closed} MLflow "
                         "run(s) marked KILLED; rerun the same command with --resume to continue")
        self.signum = signum


def fit_until_signal(tuner, base: list[str], runs_dir: Path):
    """``tuner.fit()``, with SIGTERM handled as Tune handles SIGINT (stop the trials, save the
    sweep's state), and no MLflow run of this sweep left RUNNING however it ends (a trial
    actor stopped mid-epoch never closes its own run). Raises ``SweepStopped`` after a SIGTERM."""
    received: list[int] = []

    def on_sigterm(signum, frame):
        received.append(signum)
        signal.raise_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        results = tuner.fit()
    finally:
        signal.signal(signal.SIGTERM, previous)
        closed = close_stale_runs(base, runs_dir)
        if closed and not received:
            print(f"[sweep] marked {closed} interrupted MLflow run(s) KILLED; --resume continues them")
    if received:
        raise SweepStopped(received[0], closed)
    return results


def run_sweep(points: list[dict], base: list[str], experiment: str, output_dir: str, resume: bool = False,
              cpus_per_trial: float = 1.0, gpus_per_trial: float | None = None, max_failures: int = 1):
    """Run (or, with ``resume``, continue) a sweep; return Tune's ResultGrid.

    ``gpus_per_trial=None``: one GPU per trial when the Ray cluster has GPUs and trials train
    in-process (one DDP worker), else none (a multi-worker trial's TorchTrainer asks for its own)."""
    import ray.tune
    from ray.tune.logger import JsonLoggerCallback

    from .run_config import build_run_config
    from .tracking import client_for, experiment_id, tracking_uri

    out = Path(output_dir).resolve()
    runs_dir = out / experiment / "runs"
    path = out / experiment / "tune" / experiment
    if not resume and (runs_dir.exists() or path.exists()):
        # An earlier sweep's runs are the user's data: a fresh sweep never deletes them.
        raise ValueError(f"{out / experiment} holds an earlier sweep named {experiment!r}; pass --resume to "
                         "continue it (finished trials are kept), or give another --experiment or --output-dir")
    base = sweep_base(base, experiment, output_dir)
    cfg = build_run_config(overrides=base)
    experiment_id(client_for(tracking_uri(cfg)), experiment)  # created before any trial starts
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    connect_ray()
    gpus_per_trial = check_gpus_per_trial(gpus_per_trial)
    if gpus_per_trial is None:
        from .api import uses_ray

        cluster_gpus = ray.cluster_resources().get("GPU", 0)
        gpus_per_trial = 1.0 if cluster_gpus > 0 and not uses_ray(cfg) else 0.0
        print(f"[sweep] {gpus_per_trial:g} GPU(s) per trial (the cluster has {cluster_gpus:g}); "
              "--gpus-per-trial sets it (a fraction packs several trials on one GPU)")
    elif 0 < gpus_per_trial < 1:
        from .api import uses_ray

        if uses_ray(cfg):
            raise ValueError(f"--gpus-per-trial {gpus_per_trial:g} packs in-process trials on one GPU, but these "
                             f"trials start a worker group of {cfg.dist.workers} (dist.workers), which asks for "
                             "its own GPUs; use dist.workers=1 to pack, or leave --gpus-per-trial unset")
        print(f"[sweep] {gpus_per_trial:g} GPU per trial: up to {int(1 / gpus_per_trial)} trials share a GPU")
    base = packed_loader_workers(base, cpus_per_trial, gpus_per_trial)
    trainable = ray.tune.with_resources(_trial_trainable, {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    storage = str(out / experiment / "tune")
    if resume and ray.tune.Tuner.can_restore(str(path)):
        print(f"[sweep] resuming {path}; closed {close_stale_runs(base, runs_dir)} stale RUNNING MLflow runs")
        tuner = ray.tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
    else:
        # A fresh sweep (checked above: nothing of an earlier one here); within it, trials always
        # resume their own checkpoints, so a retried trial continues instead of starting over.
        tuner = ray.tune.Tuner(
            trainable,
            param_space={"base": base, "point": ray.tune.grid_search(points)},
            # A reused trial actor has torch, transformers and the method modules imported
            # already (about 9 s of a fresh process's start on 2 cores).
            tune_config=ray.tune.TuneConfig(reuse_actors=True),
            # Of Tune's automatic loggers only the JSON one (the CSV and TensorBoard ones are
            # off): ResultGrid reads each trial's metrics back from result.json.
            run_config=ray.tune.RunConfig(name=experiment, storage_path=storage, verbose=1,
                                          callbacks=[JsonLoggerCallback()],
                                          failure_config=ray.tune.FailureConfig(max_failures=max_failures)),
        )
    return fit_until_signal(tuner, base, runs_dir)


def sweep_base(base: list[str], experiment: str, output_dir: str) -> list[str]:
    """Every trial's shared overrides: its own run folders under ``<output_dir>/<experiment>/runs``,
    one MLflow store for all sweeps at ``<output_dir>/mlflow.db`` unless a URI is given."""
    out = Path(output_dir).resolve()
    tracking = [] if any(o.startswith("tracking.tracking_uri=") for o in base) else [
        f"tracking.tracking_uri=sqlite:///{out / 'mlflow.db'}"]
    return [f"output_dir={out / experiment / 'runs'}", f"tracking.experiment={experiment}",
            f"tracking.sweep={experiment}", *tracking, *base]


def sweep_parser(description: str, default_experiment: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true", help="tiny preset, 1 seed, few epochs: minutes on a CPU")
    p.add_argument("--datasets", default=None, help="comma-separated registered datasets")
    p.add_argument("--root", default=None, help="folder holding the datasets (real benchmarks)")
    p.add_argument("--experiment", default=default_experiment)
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                   help="MLflow URI for every trial (default: $MLFLOW_TRACKING_URI, else sqlite under --output-dir)")
    p.add_argument("--output-dir", default="runs/sweeps")
    p.add_argument("--resume", action="store_true", help="continue a killed sweep without re-running finished trials")
    p.add_argument("--preset", choices=["tiny", "paper"], default=None)
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; --smoke: 0)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="default: 1 if the Ray cluster has GPUs and trials run one worker each, else 0; "
                        "a fraction (0.25) packs that many trials per GPU")
    p.add_argument("--leaderboard", default=None, help="write the leaderboard CSV/Markdown here afterwards")
    p.add_argument("--rows", default=None,
                   help="comma-separated row patterns (fnmatch on METHOD/ABLATION, e.g. 'ccaf/no_*,ccaf/default'): "
                        "run only the grid's rows that match")
    p.add_argument("--compare", default=None,
                   help="comma-separated methods whose default runs join the grid (e.g. baseline,clip_reid), "
                        "so that the leaderboard sets them beside the rows")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="run-config overrides for every trial")
    return p


# Occluded ablations keep every run's last epoch (as the papers report): validation on held-out
# training images (mostly holistic) picked epoch 0 or 1 in 5 of 9 tiny synthetic_occluded runs,
# and the seed std of test mAP fell from 3.6-3.9 with that selection to 0.35-0.70 (README).
LAST_EPOCH = ("data.val_fraction=0",)

# --smoke checks the machinery end to end in minutes: tiny preset, few epochs, a small
# synthetic benchmark and an untrained tiny CLIP (no 5-minute pretraining first).
SMOKE_OVERRIDES = ("preset=tiny", "optim.epochs_scale=0.15", "data.synthetic.ids=24",
                   "backbone.pretrained=null")


def sweep_main(trials: Callable[[argparse.Namespace], list[Trial]], default_datasets: Sequence[str],
               description: str, default_experiment: str, argv: list[str] | None = None,
               defaults: Sequence[str] = ()) -> int:
    """What every ``sweeps/*.py`` script runs: parse flags, expand the grid, run it, write the leaderboard.
    ``defaults``: the sweep's own run-config overrides, before ``--smoke``'s and the command line's."""
    args = sweep_parser(description, default_experiment).parse_args(argv)
    try:
        check_gpus_per_trial(args.gpus_per_trial)
    except ValueError as exc:
        print(f"[sweep] {exc}", file=sys.stderr)
        return 2
    datasets = args.datasets.split(",") if args.datasets else list(default_datasets)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else ([0] if args.smoke else list(SEEDS))
    base = [*defaults, *(SMOKE_OVERRIDES if args.smoke else ())]
    if args.preset:
        base.append(f"preset={args.preset}")
    if args.root:
        base.append(f"data.root={args.root}")
    if args.tracking_uri:
        base.append(f"tracking.tracking_uri={args.tracking_uri}")
    base += args.overrides
    try:
        grid = select_rows(trials(args), args.rows, args.compare)
    except ValueError as exc:
        print(f"[sweep] {exc}", file=sys.stderr)
        return 2
    points = expand(grid, datasets, seeds)
    print(f"[sweep] {args.experiment}: {len(points)} trials ({len(datasets)} datasets x {len(seeds)} seeds)")
    try:
        results = run_sweep(points, base, args.experiment, args.output_dir, resume=args.resume,
                            cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial)
    except ValueError as exc:  # bad input found before any trial ran (an earlier sweep, a bad override)
        print(f"[sweep] {exc}", file=sys.stderr)
        return 2
    except SweepStopped as exc:
        print(f"[sweep] {exc}", file=sys.stderr)
        return 128 + exc.signum
    errors = [r for r in results if r.error]
    overheads = [r.metrics["overhead_seconds"] for r in results if r.metrics and "overhead_seconds" in r.metrics]
    if overheads:
        print(f"[sweep] per-trial overhead (neither training nor evaluation): "
              f"mean {sum(overheads) / len(overheads):.1f} s, max {max(overheads):.1f} s over {len(overheads)} trials")
    out = args.leaderboard or str(Path(args.output_dir) / "leaderboard" / args.experiment)
    write_sweep_leaderboard(args.experiment, sweep_base(base, args.experiment, args.output_dir), out)
    if errors:
        print(f"[sweep] {len(errors)} trial(s) failed; rerun with --resume to retry them")
        return 1
    return 0


def write_sweep_leaderboard(experiment: str, base: list[str], out: str) -> list[Path]:
    """The sweep's leaderboard, as ``reidbench leaderboard`` writes it (``leaderboard.write_outputs``:
    CSV, Markdown with the papers' tables, sign agreement, occlusion robustness, plots in
    ``out/plots``); returns the files written."""
    from .leaderboard import load_runs, write_outputs
    from .run_config import build_run_config
    from .tracking import tracking_uri

    cfg = build_run_config(overrides=base)
    runs = load_runs(experiment, tracking_uri(cfg)).runs
    _, written, agreement = write_outputs(runs, out, experiment)
    for line in agreement:
        print(f"[sweep] {line}")
    print(f"[sweep] leaderboard: {Path(out) / 'leaderboard.md'} (and .csv); "
          f"{sum(p.suffix == '.png' for p in written)} plot(s) in {Path(out) / 'plots'}")
    return written


def check_gpus_per_trial(gpus: float | None) -> float | None:
    """``--gpus-per-trial``: None (decided from the cluster), 0, a fraction in (0, 1) that packs
    several trials on one GPU (Ray Tune's fractional resources; the trials share its memory and
    must fit together), or a whole number of GPUs. Ray accepts nothing else."""
    if gpus is None:
        return None
    if gpus < 0 or (gpus > 1 and not float(gpus).is_integer()):
        raise ValueError(f"--gpus-per-trial must be 0, a fraction below 1 (e.g. 0.25 packs four trials on a GPU) "
                         f"or a whole number of GPUs, got {gpus:g}")
    return float(gpus)


def packed_loader_workers(base: list[str], cpus_per_trial: float, gpus_per_trial: float) -> list[str]:
    """``base`` plus ``data.num_workers`` = the trial's CPUs minus one when trials share a GPU and
    the sweep leaves it unset: otherwise each packed trial would start the DataLoader workers
    of a whole machine (``trainer.loader_workers``), and together they would oversubscribe it."""
    if not 0 < gpus_per_trial < 1 or any(o.startswith("data.num_workers=") for o in base):
        return base
    return [*base, f"data.num_workers={max(0, int(cpus_per_trial) - 1)}"]
