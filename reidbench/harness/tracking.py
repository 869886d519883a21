"""MLflow conventions (docs/design.md, "Tracking conventions").

One run per (method, ablation, dataset, seed) in an experiment, named
``method/ablation/dataset/seed`` and tagged with those four plus ``sweep`` and the git
commit; the training loop adds ``validation.protocol`` / ``validation.source`` /
``validation.metric`` (what selected the model, ``harness.validation.Validation.tags``). A resumed run continues the run it finds by those tags; a fresh run with the
same tags replaces it (the old one is deleted), so an experiment never holds two runs
of one configuration. Runs end FINISHED, FAILED or KILLED, never left RUNNING.
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


def find_runs(client, exp_id: str, tags: dict[str, str]) -> list:
    query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
    return client.search_runs([exp_id], filter_string=query, max_results=100)


def open_run(cfg: RunConfig, resolved: dict, resume: bool) -> tuple[str, str]:
    """Return (tracking uri, run id) of the run to log into, created or continued."""
    uri = tracking_uri(cfg)
    client = client_for(uri)
    exp_id = experiment_id(client, cfg.tracking.experiment)
    tags = run_tags(cfg)
    existing = find_runs(client, exp_id, tags)
    if resume and existing:
        run_id = existing[0].info.run_id
        for extra in existing[1:]:
            client.delete_run(extra.info.run_id)
        client.update_run(run_id, status="RUNNING")
        return uri, run_id
    for old in existing:
        client.delete_run(old.info.run_id)
    run = client.create_run(exp_id, run_name=cfg.run_name, tags={**tags, "git_commit": git_commit()})
    run_id = run.info.run_id
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
