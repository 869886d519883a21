"""MLflow conventions (docs/design.md, "Tracking conventions").

One run per (method, ablation, dataset, seed) in an experiment, named
``method/ablation/dataset/seed`` and tagged with those four plus ``sweep`` and the git
commit; the training loop adds ``validation.protocol`` / ``validation.source`` /
``validation.metric`` (what selected the model, ``harness.validation.Validation.tags``),
``config_hash`` (the resolved config, ``api.config_hash``) and ``run_dir``. A resumed run
continues the MLflow run its run folder names. A fresh run of the same resolved config
tags the earlier runs of that config ``superseded`` (value: the new run's id) and keeps
them; nothing here deletes a run. Runs end FINISHED, FAILED or KILLED, never left RUNNING.
Filter strings only ever hold hex digits (``config_hash``); names are restricted to
``run_config.NAME_PATTERN``.
Only ``MlflowClient`` is used (no global active run), so workers and sweeps can log
to the same store concurrently.
"""

from __future__ import annotations

import fcntl
import subprocess
import time
from pathlib import Path
from typing import Any

from ..config import flatten
from .run_config import RunConfig

RUN_TAGS = ("method", "ablation", "dataset", "seed", "sweep")


def tracking_uri(cfg: RunConfig) -> str:
    if cfg.tracking.tracking_uri:
        return cfg.tracking.tracking_uri
    return f"sqlite:///{(Path(cfg.output_dir).resolve() / 'mlflow.db')}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_tags(cfg: RunConfig) -> dict[str, str]:
    return {"method": cfg.method, "ablation": cfg.tracking.ablation, "dataset": cfg.data.dataset,
            "seed": str(cfg.seed), "sweep": cfg.tracking.sweep}


def client_for(uri: str):
    """An ``MlflowClient`` whose store exists. A fresh SQLite store is created under a file
    lock: processes that open the same new ``mlflow.db`` at once (two ``reidbench train``
    commands, sweep trials) otherwise race in MLflow's schema migration and crash
    ("duplicate column name", "expected to match one row")."""
    from mlflow.tracking import MlflowClient

    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # creates and migrates the schema if needed
    return client


def experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(client.tracking_uri))
    except Exception:  # created concurrently by another trial
        return client.get_experiment_by_name(name).experiment_id


def artifact_location(uri: str) -> str | None:
    """Artifacts of a SQLite store go beside the database file (MLflow's default would be
    ``./mlruns`` in whatever folder the process happens to run in); servers keep their own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


SUPERSEDED_TAG = "superseded"
# the backbone weights a run started from (trainer.weights_fingerprint); the leaderboard separates by it
INIT_TAG = "backbone.init_sha256"


def _filter_value(value: str) -> str:
    """A value for an MLflow filter string: quotes and backslashes are refused, never spliced in."""
    if any(c in value for c in "'\"\\"):
        raise ValueError(f"{value!r} cannot appear in an MLflow filter (quotes and backslashes are not allowed)")
    return f"'{value}'"


def runs_of_config(client, exp_id: str, chash: str) -> list:
    """Every run of ``exp_id`` logged with ``config_hash`` ``chash`` (any status)."""
    return client.search_runs([exp_id], filter_string=f"tags.config_hash = {_filter_value(chash)}",
                              max_results=1000)


def open_run(cfg: RunConfig, resolved: dict, resume_run_id: str | None = None, config_hash: str = "",
             run_dir: Path | None = None) -> tuple[str, str]:
    """Return (tracking uri, run id) of the run to log into: ``resume_run_id`` continued (set
    RUNNING) when this store has it, else a new run, which supersedes the earlier runs of the
    same ``config_hash`` in the experiment (tagged, never deleted)."""
    uri = tracking_uri(cfg)
    client = client_for(uri)
    exp_id = experiment_id(client, cfg.tracking.experiment)
    tags = run_tags(cfg)
    if resume_run_id:
        from mlflow.exceptions import MlflowException

        try:
            previous = client.get_run(resume_run_id)
        except MlflowException:
            previous = None
        if previous is not None and previous.info.experiment_id == exp_id \
                and previous.info.lifecycle_stage == "active":
            client.update_run(resume_run_id, status="RUNNING")
            return uri, resume_run_id
    extra = {"config_hash": config_hash} if config_hash else {}
    if run_dir is not None:
        extra["run_dir"] = str(Path(run_dir).absolute())
    run = client.create_run(exp_id, run_name=cfg.run_name, tags={**tags, **extra, "git_commit": git_commit()})
    run_id = run.info.run_id
    if config_hash:
        for old in runs_of_config(client, exp_id, config_hash):
            if old.info.run_id != run_id and SUPERSEDED_TAG not in old.data.tags:
                client.set_tag(old.info.run_id, SUPERSEDED_TAG, run_id)
    from mlflow.entities import Param

    params = [Param(k, _param_value(v)) for k, v in sorted(flatten(resolved).items())]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i:i + 100])
    client.log_dict(run_id, resolved, "config.yaml")
    return uri, run_id


def _param_value(v: Any) -> str:
    return str(v)[:6000]


def close_run(uri: str, run_id: str, status: str) -> None:
    client_for(uri).set_terminated(run_id, status=status)


class MlflowTracker:
    """What rank 0 logs through: per-epoch metrics, figures, and tags known only once the data
is read (``validation.*``: the protocol and split that select the model)."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.uri = uri
        self.run_id = run_id
        self.client = client_for(uri)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_metric_key(k), float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i:i + 500])

    def set_tags(self, tags: dict[str, str]) -> None:
        """Tags, not params: a resumed run sets them again, and MLflow refuses to change a param."""
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_figure(self, figure, path: str) -> None:
        self.client.log_figure(self.run_id, figure, path)


def _metric_key(key: str) -> str:
    return key.replace("@", "_at_")
