"""Ray Tune sweeps: a sweep killed mid-way and resumed ends with one FINISHED MLflow run per trial."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from reidbench.harness.tune import Trial, expand, param_grid, sweep_parser

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_grid_expansion_names_and_overrides():
    trials = param_grid("profd", {"m_g": (0.1, 0.2)}) + [Trial("baseline")]
    points = expand(trials, ["synthetic_occluded"], [0, 1])
    assert [p["name"] for p in points] == [
        "profd/m_g=0.1/synthetic_occluded/0", "profd/m_g=0.1/synthetic_occluded/1",
        "profd/m_g=0.2/synthetic_occluded/0", "profd/m_g=0.2/synthetic_occluded/1",
        "baseline/default/synthetic_occluded/0", "baseline/default/synthetic_occluded/1"]
    assert "params.m_g=0.1" in points[0]["overrides"] and "tracking.ablation=m_g=0.1" in points[0]["overrides"]


def test_rows_and_compare_pick_the_grid_a_user_asks_for(tmp_path, capsys):
    from reidbench.harness.tune import select_rows, sweep_main

    grid = param_grid("profd", {"m_g": (0.1, 0.2)}) + [Trial("profd", "full"), Trial("profd", "no_div")]
    picked = select_rows(grid, "profd/m_g=*,profd/full", "baseline,clip_reid")
    assert [f"{t.method}/{t.ablation}" for t in picked] == [
        "profd/m_g=0.1", "profd/m_g=0.2", "profd/full", "baseline/default", "clip_reid/default"]
    assert select_rows(grid + [Trial("baseline")], None, "baseline")[-1] == Trial("baseline")  # not twice
    assert len(select_rows(grid + [Trial("baseline")], None, "baseline")) == 5
    # a pattern that matches nothing, or an unknown method, stops the sweep before anything is written
    for flag in (["--rows", "profd/ful"], ["--compare", "clipreid"]):
        code = sweep_main(lambda args: grid, ["synthetic_occluded"], "a sweep", "abl",
                          argv=["--output-dir", str(tmp_path), "--seeds", "0", *flag])
        err = capsys.readouterr().err
        assert code == 2 and flag[1] in err and "Traceback" not in err
        assert ("profd/full" in err) if flag[0] == "--rows" else ("clip_reid" in err)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "sweeps").glob("*.py")))
@pytest.mark.parametrize("smoke", [True, False])
def test_every_sweep_grid_point_is_a_valid_run_config(script, smoke):
    """A misspelt or mistyped hyperparameter in a sweep script must fail here, not as
    one errored trial per seed hours into a cluster sweep."""
    import importlib.util

    from reidbench.harness.run_config import build_run_config, method_config

    spec = importlib.util.spec_from_file_location(script.removesuffix(".py"), REPO / "sweeps" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = sweep_parser("", "x").parse_args(["--smoke"] if smoke else [])
    points = expand(module.trials(args), ["synthetic_occluded"], [0])
    assert points and len({p["name"] for p in points}) == len(points)
    for point in points:
        method_config(build_run_config(overrides=point["overrides"]))


@pytest.fixture(scope="module")
def market_root(tmp_path_factory):
    from reidbench.datasets.synthetic import synthesize

    return str(synthesize(tmp_path_factory.mktemp("synth"), flavor="market", ids=16, seed=0, workers=1)["market"])


def sweep_command(out: Path, market_root: str, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "sweeps" / "benchmark.py"), "--smoke", "--datasets", "market1501",
            "--root", market_root, "--output-dir", str(out), "--experiment", "killed", *extra,
            "data.p=4", "data.k=2", "data.val_fraction=0.25", "optim.epochs_scale=0.3"]


def start_and_wait_for_an_epoch(tmp_path: Path, market_root: str, env: dict) -> tuple[subprocess.Popen, MlflowClient]:
    """A sweep driver in its own session, returned once its first trial has logged an epoch."""
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(sweep_command(tmp_path, market_root), stdout=log, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
    db = tmp_path / "mlflow.db"
    client = MlflowClient(f"sqlite:///{db}")
    deadline = time.time() + 600
    while time.time() < deadline and first.poll() is None:
        time.sleep(2)
        if db.exists():
            exp = client.get_experiment_by_name("killed")
            runs = client.search_runs([exp.experiment_id]) if exp else []
            if any("train/loss" in r.data.metrics for r in runs):
                break
    assert first.poll() is None, f"the sweep ended before it could be killed:\n{(tmp_path / 'first.log').read_text()[-3000:]}"
    return first, client


def sweep_env() -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)  # a local Ray session of the sweep's own
    return env


def test_killed_sweep_resumes_without_duplicates(tmp_path, market_root):
    env = sweep_env()
    # Kill the driver and its whole Ray session (SIGKILL: nothing can clean up).
    first, client = start_and_wait_for_an_epoch(tmp_path, market_root, env)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    subprocess.run(["ray", "stop", "--force"], capture_output=True, timeout=120)

    exp = client.get_experiment_by_name("killed")
    assert any(r.info.status == "RUNNING" for r in client.search_runs([exp.experiment_id])), "killed mid-way"

    resumed = subprocess.run(sweep_command(tmp_path, market_root, "--resume"), capture_output=True, text=True,
                             env=env, timeout=1200)
    subprocess.run(["ray", "stop", "--force"], capture_output=True, timeout=120)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    runs = client.search_runs([exp.experiment_id])
    from reidbench.methods import get_method, list_methods

    expected = {f"{m}/default/market1501/0" for m in list_methods() if "image" in get_method(m).tasks}
    assert sorted(r.info.run_name for r in runs) == sorted(expected), "exactly one run per trial"
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert all("test/standard/mAP" in r.data.metrics for r in runs)
    board = tmp_path / "leaderboard" / "killed"
    assert any(board.glob("*.csv")), "the sweep writes its leaderboard"
    # where the trials' time went is reported (seconds outside training and evaluation)
    assert re.search(r"\[sweep\] per-trial overhead .*: mean \d+\.\d s, max \d+\.\d s over \d+ trials",
                     resumed.stdout), resumed.stdout[-3000:]


def test_a_sigterm_stops_the_sweep_with_no_run_left_running_and_resume_finishes_it(tmp_path, market_root):
    env = sweep_env()
    first, client = start_and_wait_for_an_epoch(tmp_path, market_root, env)
    os.kill(first.pid, signal.SIGTERM)  # the driver only, as a scheduler or `kill` would
    code = first.wait(timeout=300)
    log = (tmp_path / "first.log").read_text()
    subprocess.run(["ray", "stop", "--force"], capture_output=True, timeout=120)
    assert code == 128 + signal.SIGTERM, log[-3000:]
    assert "SIGTERM received" in log and "--resume" in log, log[-3000:]
    exp = client.get_experiment_by_name("killed")
    statuses = [r.info.status for r in client.search_runs([exp.experiment_id])]
    assert "RUNNING" not in statuses and "KILLED" in statuses, statuses

    resumed = subprocess.run(sweep_command(tmp_path, market_root, "--resume"), capture_output=True, text=True,
                             env=env, timeout=1200)
    subprocess.run(["ray", "stop", "--force"], capture_output=True, timeout=120)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    runs = client.search_runs([exp.experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED"} and len({r.info.run_name for r in runs}) == len(runs)


def test_closing_stale_runs_leaves_another_sweeps_runs_of_the_experiment_alone(tmp_path):
    from reidbench.harness.tune import close_stale_runs, sweep_base

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("shared")
    mine, other = tmp_path / "a" / "shared" / "runs", tmp_path / "b" / "shared" / "runs"
    ids = {name: client.create_run(exp_id, tags={"run_dir": str(root / name / "0" / "abc")}).info.run_id
           for name, root in (("m1", mine), ("m2", mine), ("o1", other))}
    client.set_terminated(ids["m2"], status="FINISHED")
    base = sweep_base([f"tracking.tracking_uri={uri}"], "shared", str(tmp_path / "a"))
    assert close_stale_runs(base, mine) == 1
    status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {"m1": "KILLED", "m2": "FINISHED", "o1": "RUNNING"}


def test_a_fresh_sweep_never_deletes_an_earlier_one(tmp_path, capsys):
    """A sweep started again without --resume stops with one message (exit 2) before anything
    is written, and the earlier sweep's run folders and Tune state stay as they were."""
    from reidbench.harness.tune import Trial, sweep_main

    earlier = tmp_path / "abl" / "runs" / "profd" / "default" / "synthetic_occluded" / "0" / "abc" / "weights.pt"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"a finished run")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code = sweep_main(lambda args: [Trial("profd")], ["synthetic_occluded"],
                      "a sweep", "abl", argv=["--output-dir", str(tmp_path), "--seeds", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "earlier sweep named 'abl'" in err and "--resume" in err and "Traceback" not in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert earlier.read_bytes() == b"a finished run"
