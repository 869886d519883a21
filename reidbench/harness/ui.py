"""``reidbench ui``: the MLflow UI over a tracking store, bound to 127.0.0.1 unless told otherwise.

It runs ``python -m mlflow server --backend-store-uri URI`` in place of itself (``exec``),
so Ctrl-C or a SIGTERM to this process reaches the server directly and nothing is left
behind. ``--workers 1`` by default: one person browsing needs one uvicorn worker, and
each extra worker costs a Python process of memory.

Decisions:

* The default store is the one ``reidbench train`` writes by default
  (``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/runs/mlflow.db``), so running
  ``reidbench ui`` where one ran ``reidbench train`` shows those runs.
* A SQLite or file store that does not exist is an error that names it, rather than a
  new empty store that hides a wrong path.
* An ``http(s)://`` URI is already a server (e.g. the MLflow server on a cluster's head):
  there is nothing to serve; the message says to open it (``ray attach cluster.yaml -p
  5000`` forwards the cluster's port).
* Binding to anything but 127.0.0.1/localhost/::1 exposes the runs to the network, so it
  happens only when asked for with ``--host``, and MLflow's host-header check is left on
  (its default allows private-network hosts).
* MLflow's GenAI job runner is off (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`` unless
  set): ReID runs have no LLM-judge jobs, and it is one more process to start.
* The experiments page of MLflow 3 opens on its GenAI overview; the runs table of an
  experiment is at ``#/experiments/<id>/runs`` (``runs_url``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def store_problem(uri: str) -> str | None:
    """Why ``uri`` cannot be served, or None when it can."""
    if uri.startswith(("http://", "https://")):
        return (f"{uri} is a tracking server already: open it in a browser (on a Ray cluster: "
                "`ray attach cluster.yaml -p 5000`, then http://127.0.0.1:5000)")
    path = None
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
    elif uri.startswith("file://"):
        path = Path(uri[len("file://"):])
    elif "://" not in uri:
        path = Path(uri)
    if path is not None and not path.exists():
        return (f"no tracking store at {path}: run `reidbench train` (or a sweep) first, "
                "or pass --tracking-uri")
    return None


def ui_command(tracking_uri: str, host: str = "127.0.0.1", port: int = 5000, workers: int = 1) -> list[str]:
    """The ``mlflow server`` command line that ``reidbench ui`` runs."""
    if "://" not in tracking_uri:  # a bare path: a SQLite file (``*.db``) or a file-store folder
        path = Path(tracking_uri).resolve()
        tracking_uri = f"sqlite:///{path}" if path.suffix == ".db" or path.is_file() else path.as_uri()
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
            "--host", host, "--port", str(port), "--workers", str(workers)]


def runs_url(host: str, port: int, experiment_id: str | None = None) -> str:
    """Where the runs table is (the experiment's, or the experiments list)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown
    base = f"http://{shown}:{port}/"
    return f"{base}#/experiments/{experiment_id}/runs" if experiment_id else base


def run_ui(args: argparse.Namespace) -> int:
    from .leaderboard import default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri()
    problem = store_problem(uri)
    if problem:
        print(f"reidbench ui: {problem}", file=sys.stderr)
        return 2
    if args.host not in LOCAL_HOSTS:
        print(f"reidbench ui: binding to {args.host}: every machine that can reach it sees the runs", file=sys.stderr)
    cmd = ui_command(uri, args.host, args.port, args.workers)
    print(f"MLflow UI for {uri} at {runs_url(args.host, args.port)} (Ctrl-C stops it)", flush=True)
    # MLflow's job runner executes GenAI jobs (LLM judges, scorers); a ReID tracking UI has
    # none, and the runner is one more process importing all of MLflow at start-up.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execv(cmd[0], cmd)
    return 0  # not reached: exec replaces this process
