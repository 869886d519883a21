"""Bad inputs and faults, table-driven: every one is a clear error (exit code 2, one message
saying what, where and what was expected, no traceback) or correct behaviour, and none
deletes anything the command did not create or leaves an MLflow run RUNNING.

Categories: dataset trees, text JSON, config and overrides, CLI flags, checkpoints,
permissions (unwritable locations), concurrency (run locks, two processes on an empty
cache) and signals (SIGTERM mid-epoch, then --resume). Almost every case fails before
training; the few that train use the tiny preset on an 8-identity synthetic set.
``test_summary`` prints "N bad inputs tried, N clear errors, 0 data lost, 0 orphaned runs".
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from reidbench.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = ["backbone.pretrained=null", "data.image_size=[64,32]", "data.p=2", "data.k=2", "data.val_fraction=0",
        "optim.epochs_scale=0.25", "data.num_workers=0"]
RESULTS: dict[str, dict] = {}  # case id -> {"clear": bool, "lost": int, "orphans": int}


# ----------------------------------------------------------------------------- the world the cases break

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny market set, a PEDES-layout set, and the user's precious results: a finished run
    folder and a FINISHED MLflow run in --output-dir that no case may touch."""
    from mlflow.tracking import MlflowClient

    from reidbench.datasets.synthetic import synthesize

    base = tmp_path_factory.mktemp("bad")
    market = Path(synthesize(base / "synth", flavor="market", ids=8, seed=0, workers=1, image_size=(64, 32),
                             images_per_id={"market": 4})["market"])
    out = base / "runs"
    precious = out / "baseline" / "default" / "market1501" / "0" / "0123456789"
    (precious / "checkpoints" / "latest").mkdir(parents=True)
    (precious / "best.safetensors").write_bytes(b"the user's weights")
    (precious / "checkpoints" / "latest" / "model.safetensors").write_bytes(b"the user's checkpoint")
    uri = f"sqlite:///{out / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("reidbench-default")
    run = client.create_run(exp, run_name="baseline/default/market1501/0",
                            tags={"method": "baseline", "ablation": "default", "dataset": "market1501", "seed": "0"})
    client.set_terminated(run.info.run_id, "FINISHED")
    return {"base": base, "market": market, "out": out, "uri": uri, "precious_run": run.info.run_id}


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in ("mlflow.db", "mlflow.db-journal")}


def mlflow_runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exps = client.search_experiments()
    return client.search_runs([e.experiment_id for e in exps]) if exps else []


def train_args(world, *extra, root=None, out=None) -> list[str]:
    return ["train", "--method", "baseline", "--dataset", "market1501", "--root", str(root or world["market"]),
            "--output-dir", str(out or world["out"]), *TINY, *extra]


def copy_market(world, name: str) -> Path:
    dst = world["base"] / name
    if not dst.exists():
        shutil.copytree(world["market"], dst, symlinks=True)
    return dst


def pedes(world, name: str, entries, text: str | None = None) -> Path:
    """A CUHK-PEDES layout holding ``entries`` (images borrowed from the market set)."""
    root = world["base"] / name / "CUHK-PEDES"
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    images = sorted((world["market"] / "bounding_box_train").glob("*.jpg"))[:4]
    for i, img in enumerate(images):
        shutil.copy(img, root / "imgs" / f"{i}.jpg")
    (root / "reid_raw.json").write_text(text if text is not None else json.dumps(entries))
    return root.parent


def good_entries(**change) -> list[dict]:
    rows = [{"id": i // 2, "file_path": f"{i}.jpg", "captions": ["a person walking."],
             "split": ["train", "train", "test", "test"][i]} for i in range(4)]
    rows[0].update(change)
    return rows


# ----------------------------------------------------------------------------- the table

@dataclass
class Case:
    id: str
    category: str
    argv: Callable[[dict], list[str]]  # built from the world (may write the bad input first)
    expect: str  # a regex the one-line message must match


def _yaml(world, name: str, text: str, base: str | None = None) -> str:
    path = world["base"] / name
    path.write_text(text)
    if base is not None:
        (world["base"] / base[0]).write_text(base[1])
    return str(path)


def _corrupt_images(world) -> list[str]:
    root = copy_market(world, "corrupt")
    query = sorted((root / "query").glob("*.jpg"))[0]
    query.write_bytes(query.read_bytes()[:len(query.read_bytes()) // 2])  # truncated
    (sorted((root / "bounding_box_train").glob("*.jpg"))[0]).write_bytes(b"")  # zero bytes
    (sorted((root / "bounding_box_test").glob("*.jpg"))[-1]).write_bytes(b"not an image at all")
    return train_args(world, root=root)


def _symlink_loop(world) -> list[str]:
    root = copy_market(world, "loop")
    train = root / "bounding_box_train"
    if not (train / "a").is_symlink():
        os.symlink("b", train / "a")
        os.symlink("a", train / "b")
    return train_args(world, root=root)


def _hash_dir(world) -> list[str]:
    return train_args(world, root=world["base"] / "hash #1" / "nowhere")  # " #" would start a YAML comment


def _in_use(world) -> list[str]:
    from reidbench.harness.api import config_hash, name_folder, resolve_device, run_lock
    from reidbench.harness.commands import run_config_from_args
    from reidbench.cli import build_parser
    from reidbench.harness.run_config import resolved_dict

    argv = train_args(world)
    cfg = resolve_device(run_config_from_args(build_parser().parse_args(argv)))
    lock = run_lock(name_folder(cfg), config_hash(resolved_dict(cfg)))
    lock.__enter__()
    world.setdefault("held", []).append(lock)
    return argv


def _half_written(world) -> list[str]:
    from reidbench.harness.api import current_run_dir
    from reidbench.harness.commands import run_config_from_args
    from reidbench.cli import build_parser

    out = world["base"] / "half"
    argv = train_args(world, "--resume", "--seed", "3", out=out)
    run_dir = current_run_dir(run_config_from_args(build_parser().parse_args(argv)))
    for name in ("latest.tmp", "latest.old"):
        (run_dir / "checkpoints" / name).mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoints" / name / "model.safetensors").write_bytes(b"half")
    return argv


def _a_file(world) -> Path:
    path = world["base"] / "a_file"
    path.write_text("not a folder")
    return path


def _eval_truncated(world) -> list[str]:
    run = world["trained_dir"]
    copy = world["base"] / "trunc_run"
    if not copy.exists():
        shutil.copytree(run, copy)
        weights = copy / "checkpoints" / "latest" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    return ["eval", "--checkpoint", str(copy / "checkpoints" / "latest")]


def _eval_mismatched(world) -> list[str]:
    import torch
    from safetensors.torch import load_file, save_file

    copy = world["base"] / "mismatch_run"
    if not copy.exists():
        shutil.copytree(world["trained_dir"], copy)
        weights = copy / "checkpoints" / "latest" / "model.safetensors"
        state = load_file(str(weights))
        key = next(k for k, v in state.items() if v.dim() == 2)
        state[key] = torch.zeros(3, 3)
        save_file(state, str(weights))
    return ["eval", "--checkpoint", str(copy / "checkpoints" / "latest")]


def _eval_empty_config(world) -> list[str]:
    copy = world["base"] / "empty_cfg_run"
    if not copy.exists():
        shutil.copytree(world["trained_dir"], copy)
        (copy / "checkpoints" / "latest" / "config.yaml").write_text("")
    return ["eval", "--checkpoint", str(copy / "checkpoints" / "latest")]


CASES = [
    # dataset trees
    Case("corrupt images in three splits", "dataset trees", _corrupt_images,
         r"3 of \d+ image\(s\) this run would read cannot be used(?s:.*)bounding_box_test.*not an image"
         r"(?s:.*)bounding_box_train.*zero-byte(?s:.*)query.*truncated JPEG"),
    Case("symlink loop", "dataset trees", _symlink_loop, r"symbolic link loop"),
    Case("missing root", "dataset trees", lambda w: train_args(w, root=w["base"] / "nowhere"),
         r"root folder .*nowhere' does not exist"),
    # text JSON
    Case("PEDES captions as a string", "text JSON",
         lambda w: ["train", "--method", "t2i_baseline", "--dataset", "cuhk_pedes", "--output-dir", str(w["out"]),
                    "--root", str(pedes(w, "p_str", good_entries(captions="a person walking."))), *TINY],
         r'"captions" must be a list of non-empty strings'),
    Case("PEDES file_path escapes", "text JSON",
         lambda w: ["train", "--method", "t2i_baseline", "--dataset", "cuhk_pedes", "--output-dir", str(w["out"]),
                    "--root", str(pedes(w, "p_escape", good_entries(file_path="../../../../etc/passwd"))), *TINY],
         r"leaves the dataset folder"),
    Case("PEDES broken JSON", "text JSON",
         lambda w: ["train", "--method", "t2i_baseline", "--dataset", "cuhk_pedes", "--output-dir", str(w["out"]),
                    "--root", str(pedes(w, "p_json", None, text='[{"id": 1,')), *TINY],
         r"is not valid JSON"),
    # config files and overrides
    Case("broken YAML", "config", lambda w: train_args(w, "--config", _yaml(w, "broken.yaml", "data: {p: 4\nseed: 1\n")),
         r"broken\.yaml, line \d+ column \d+: not valid YAML"),
    Case("_base_ cycle", "config",
         lambda w: train_args(w, "--config", _yaml(w, "a.yaml", "_base_: b.yaml\n", ("b.yaml", "_base_: a.yaml\n"))),
         r"_base_ files form a cycle"),
    Case("unsafe YAML tag", "config",
         lambda w: train_args(w, "--config", _yaml(w, "evil.yaml", "seed: !!python/object/apply:os.system ['true']\n")),
         r"evil\.yaml, line 1: .*tags such as !!python/object are refused, never executed"),
    Case("unsafe tag in an override", "config", lambda w: train_args(w, "seed=!!python/name:os.system"),
         r"refused, never executed"),
    Case("negative epochs_scale", "config", lambda w: train_args(w, "optim.epochs_scale=-1"),
         r"'optim\.epochs_scale': expected a number > 0"),
    Case("negative epochs", "config", lambda w: train_args(w, "params.image.epochs=-3"),
         r"'params\.image\.epochs': expected a number of epochs >= 0, got -3"),
    Case("ablation leaves --output-dir", "config", lambda w: train_args(w, "tracking.ablation=../.."),
         r"'tracking\.ablation': '\.\./\.\.' is not a valid name"),
    Case("quote in the experiment name", "config", lambda w: train_args(w, "--experiment", "it's"),
         r"'tracking\.experiment': \"it's\" is not a valid name"),
    Case("data.p not divisible by --workers", "config", lambda w: train_args(w, "--workers", "3"),
         r"data\.p=2 identities per batch must divide evenly over 3 workers"),
    # command-line flags (paths are paths, never YAML)
    Case("--root 2024", "CLI flags", lambda w: train_args(w, root="2024"), r"root folder '.*/2024' does not exist"),
    Case("--root yes", "CLI flags", lambda w: train_args(w, root="yes"), r"root folder '.*/yes' does not exist"),
    Case("--root with ' #' keeps its tail", "CLI flags", _hash_dir, r"root folder '.*/hash #1/nowhere' does not exist"),
    Case("--output-dir is a file", "CLI flags", lambda w: train_args(w, out=_a_file(w)), r"a_file is a file"),
    Case("data synth --image-size", "CLI flags", lambda w: ["data", "synth", "--out", str(w["base"] / "s1"),
                                                           "--image-size", "128"], r"expected HEIGHTxWIDTH"),
    Case("data synth --ids 1", "CLI flags", lambda w: ["data", "synth", "--out", str(w["base"] / "s2"), "--ids", "1"],
         r"needs at least 2 identities"),
    Case("data synth --difficulty 3", "CLI flags",
         lambda w: ["data", "synth", "--out", str(w["base"] / "s3"), "--difficulty", "3"], r"difficulty must lie in"),
    # permissions / unwritable locations
    Case("tracking store under a file", "permissions",
         lambda w: train_args(w, "--tracking-uri", f"sqlite:///{_a_file(w)}/mlflow.db"),
         r"MLflow store .*a_file is a file, not a folder"),
    Case("--output-dir under a file", "permissions", lambda w: train_args(w, out=_a_file(w) / "runs"),
         r"--output-dir: cannot create .*a_file is a file"),
    # checkpoints
    Case("resume finds only half-written checkpoints", "checkpoints", _half_written,
         r"no complete checkpoint to resume .*latest\.tmp.*latest\.old"),
    Case("eval on a truncated checkpoint", "checkpoints", _eval_truncated, r"cannot be read .*truncated"),
    Case("eval on a mismatched checkpoint", "checkpoints", _eval_mismatched, r"does not match the model"),
    Case("eval on an empty config.yaml", "checkpoints", _eval_empty_config, r"config\.yaml is empty"),
    Case("eval on a missing checkpoint", "checkpoints", lambda w: ["eval", "--checkpoint", str(w["base"] / "none")],
         r"--checkpoint .*none does not exist"),
    # concurrency
    Case("run folder in use", "concurrency", _in_use, r"is in use by PID \d+"),
]


@pytest.fixture(scope="module")
def trained(world):
    """One uninterrupted tiny run (the eval cases' checkpoint, and the signal case's reference)."""
    from reidbench.harness.api import train_run
    from reidbench.harness.commands import run_config_from_args
    from reidbench.cli import build_parser

    out = world["base"] / "reference"
    cfg = run_config_from_args(build_parser().parse_args(train_args(world, out=out)))
    metrics = train_run(cfg)
    world["trained_dir"] = Path(metrics["run_dir"])
    return metrics


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_error_and_loses_nothing(case, world, request, capsys):
    if case.id.startswith("eval on a") and case.id != "eval on a missing checkpoint":
        request.getfixturevalue("trained")  # the checkpoint these cases break (one tiny run per module)
    before_files = snapshot(world["out"])
    before_runs = {r.info.run_id: r.info.status for r in mlflow_runs(world["uri"])}
    argv = case.argv(world)
    capsys.readouterr()
    try:
        code = main(argv)
    finally:
        for lock in world.pop("held", []):
            lock.__exit__(None, None, None)
    captured = capsys.readouterr()
    err = captured.err
    after_files = snapshot(world["out"])
    runs = mlflow_runs(world["uri"])
    lost = [f for f, h in before_files.items() if after_files.get(f) != h]
    lost += [r for r in before_runs if r not in {x.info.run_id for x in runs}]
    orphans = [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    clear = code == 2 and "Traceback" not in err + captured.out and re.search(case.expect, err) is not None
    RESULTS[case.id] = {"clear": clear, "lost": len(lost), "orphans": len(orphans)}
    assert code == 2, (code, err)
    assert "Traceback" not in err + captured.out
    assert re.search(case.expect, err), err
    assert not lost, f"deleted or changed: {lost}"
    assert not orphans
    assert len(runs) == len(before_runs), "a bad input must not open an MLflow run"


def test_debug_shows_the_traceback(world, capsys):
    with pytest.raises(ValueError, match="epochs_scale"):
        main(["--debug", *train_args(world, "optim.epochs_scale=-1")])


# ----------------------------------------------------------------------------- runs that coexist or supersede

def test_reruns_supersede_and_other_configs_coexist(world, trained):
    """Same resolved config again: a new folder, the old MLflow run tagged superseded and kept;
    another lr under the same name: its own folder; the leaderboard takes the latest
    non-superseded run of each."""
    from reidbench.harness.api import train_run
    from reidbench.harness.commands import run_config_from_args
    from reidbench.harness.leaderboard import load_runs
    from reidbench.cli import build_parser

    out = world["base"] / "reference"
    before = snapshot(out)
    cfg = run_config_from_args(build_parser().parse_args(train_args(world, out=out)))
    again = train_run(cfg)
    other = train_run(run_config_from_args(build_parser().parse_args(train_args(world, "params.image.lr=3e-4",
                                                                                    out=out))))
    after = snapshot(out)
    assert all(after.get(f) == h for f, h in before.items() if not f.endswith(".lock")), "nothing rewritten"
    dirs = {trained["run_dir"], again["run_dir"], other["run_dir"]}
    assert len(dirs) == 3 and all(Path(d).is_dir() for d in dirs)
    assert Path(again["run_dir"]).name.endswith("-2")
    runs = {r.info.run_id: r for r in mlflow_runs(f"sqlite:///{out / 'mlflow.db'}")}
    assert runs[trained["run_id"]].data.tags["superseded"] == again["run_id"]
    assert "superseded" not in runs[again["run_id"]].data.tags and "superseded" not in runs[other["run_id"]].data.tags
    board = load_runs("reidbench-default", f"sqlite:///{out / 'mlflow.db'}")
    assert set(board.runs["run_id"]) <= {again["run_id"], other["run_id"]}
    assert board.skipped.get("superseded by a re-run of its config") == 1
    RESULTS["re-run of the same config"] = {"clear": True, "lost": 0, "orphans": 0}


# ----------------------------------------------------------------------------- signals

def test_sigterm_mid_epoch_then_resume_matches_an_uninterrupted_run(world, trained):
    """``reidbench train`` in a subprocess gets SIGTERM once its first checkpoint exists: it stops
    after the current step with a mid-epoch checkpoint, exits 143, the MLflow run is KILLED;
    ``--resume`` continues that run to FINISHED with the uninterrupted run's metrics."""
    from mlflow.tracking import MlflowClient

    from reidbench.harness import checkpoint as ckpt
    from reidbench.harness.api import train_run
    from reidbench.harness.commands import run_config_from_args
    from reidbench.cli import build_parser

    out = world["base"] / "signalled"
    argv = train_args(world, out=out)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "reidbench.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    statuses = []
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        found = list(out.glob("baseline/default/market1501/0/*/checkpoints/latest/manifest.json"))
        if found:
            statuses.append(MlflowClient(f"sqlite:///{out / 'mlflow.db'}").search_runs(["1"])[0].info.status)
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=300)
    assert statuses == ["RUNNING"], stderr[-2000:]
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "SIGTERM received" in stderr and "continue with --resume" in stderr and "Traceback" not in stderr
    run_dir = next(out.glob("baseline/default/market1501/0/*/run.json")).parent
    state = ckpt.read_train_state(run_dir / "checkpoints" / "latest")
    assert state["partial"] and state["partial"]["batch"] >= 1, "stopped mid-epoch, after a step"
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (killed,) = client.search_runs(["1"])
    assert killed.info.status == "KILLED"
    statuses.append("KILLED")

    seen = []
    cfg = run_config_from_args(build_parser().parse_args(argv))
    resumed = train_run(cfg, resume=True,
                        on_epoch=lambda m: seen.append(client.get_run(killed.info.run_id).info.status))
    statuses += seen[:1] + [client.get_run(killed.info.run_id).info.status]
    assert statuses == ["RUNNING", "KILLED", "RUNNING", "FINISHED"]
    assert resumed["run_id"] == killed.info.run_id and len(client.search_runs(["1"])) == 1
    keys = sorted(k for k in trained if k.startswith(("test/", "train/")))
    assert keys and {k: resumed[k] for k in keys} == {k: trained[k] for k in keys}
    # Every epoch's logged loss too, the interrupted one included (its mean spans both processes).
    reference = MlflowClient(f"sqlite:///{world['base'] / 'reference' / 'mlflow.db'}")

    def history(c, run_id):
        return sorted((m.step, m.value) for m in c.get_metric_history(run_id, "train/loss"))

    assert history(client, killed.info.run_id) == history(reference, trained["run_id"])
    assert len(history(client, killed.info.run_id)) == 3
    RESULTS["SIGTERM mid-epoch"] = {"clear": True, "lost": 0, "orphans": 0}


def test_resume_falls_back_to_the_last_complete_checkpoint(world, trained, tmp_path):
    """A crash between the two renames of a checkpoint write leaves latest.old (and maybe a
    complete latest.tmp): resume takes the newest complete one and says which."""
    from reidbench.harness import checkpoint as ckpt

    src = Path(trained["run_dir"]) / "checkpoints" / "latest"
    folder = tmp_path / "checkpoints"
    shutil.copytree(src, folder / "latest.old")
    assert ckpt.find_resumable(folder / "latest") == (folder / "latest.old", ckpt.find_resumable(folder / "latest")[1])
    path, note = ckpt.find_resumable(folder / "latest")
    assert "latest is missing" in note and "latest.old" in note
    shutil.copytree(src, folder / "latest.tmp")
    assert ckpt.find_resumable(folder / "latest")[0] == folder / "latest.tmp", "the newer complete one"
    shutil.copytree(src, folder / "latest")
    (folder / "latest" / ckpt.STATE_FILE).write_bytes(b"truncated")
    path, note = ckpt.find_resumable(folder / "latest")
    assert path == folder / "latest.tmp" and "incomplete" in note and "does not match its hash" in note
    RESULTS["truncated latest"] = {"clear": True, "lost": 0, "orphans": 0}


def test_deepspeed_shards_are_loaded_only_when_signed_by_the_run(tmp_path):
    from reidbench.harness.checkpoint import CheckpointError
    from reidbench.harness.distributed import sign_deepspeed_shards, verify_deepspeed_shards

    shards = tmp_path / "deepspeed"
    (shards / "global_step1").mkdir(parents=True)
    (shards / "global_step1" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"pickle bytes")
    with pytest.raises(CheckpointError, match="no signed manifest.*unpickles.*can execute code"):
        verify_deepspeed_shards(shards, b"k" * 32)
    sign_deepspeed_shards(shards, 0, b"k" * 32)
    verify_deepspeed_shards(shards, b"k" * 32)
    with pytest.raises(CheckpointError, match="not signed by this run's key"):
        verify_deepspeed_shards(shards, b"x" * 32)
    (shards / "global_step1" / "extra.pt").write_bytes(b"planted")
    with pytest.raises(CheckpointError, match="no manifest signs"):
        verify_deepspeed_shards(shards, b"k" * 32)
    (shards / "global_step1" / "extra.pt").unlink()
    (shards / "global_step1" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"swapped")
    with pytest.raises(CheckpointError, match="does not match its hash"):
        verify_deepspeed_shards(shards, b"k" * 32)
    RESULTS["untrusted DeepSpeed shards"] = {"clear": True, "lost": 0, "orphans": 0}


# ----------------------------------------------------------------------------- concurrency on a cold cache

CACHE_BUILD = """
import os, sys, time
from pathlib import Path
while not Path(sys.argv[1]).exists():
    time.sleep(0.01)
from reidbench.datasets.synthetic_sets import synthetic_root
folder = synthetic_root("market", {"ids": 6, "image_size": [64, 32]})
print(os.stat(folder.parent).st_ino, folder)
"""


def test_two_processes_on_an_empty_cache_both_succeed_and_build_it_once(tmp_path):
    env = {**os.environ, "REIDBENCH_CACHE": str(tmp_path / "cache")}
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", CACHE_BUILD, str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    time.sleep(1.0)
    go.write_text("")
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1][-2000:] for r in results]
    inodes = {r[0].split()[0] for r in results}
    assert len(inodes) == 1, "a second build would have replaced the folder"
    assert sum("waiting for PID" in r[1] for r in results) <= 1
    RESULTS["two builders on an empty cache"] = {"clear": True, "lost": 0, "orphans": 0}


# ----------------------------------------------------------------------------- summary

def test_summary(capsys):
    """Last in the file: the count over every case above that ran."""
    if not RESULTS:
        pytest.skip("no case ran")
    tried = len(RESULTS)
    clear = sum(r["clear"] for r in RESULTS.values())
    lost = sum(r["lost"] for r in RESULTS.values())
    orphans = sum(r["orphans"] for r in RESULTS.values())
    with capsys.disabled():
        print(f"\n{tried} bad inputs tried, {clear} clear errors, {lost} data lost, {orphans} orphaned runs")
    assert clear == tried and lost == 0 and orphans == 0
