"""The one training loop: determinism, exact resume, MLflow runs and statuses, config refusal."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from reidbench.config import ConfigError
from reidbench.harness.api import train_run
from reidbench.harness.run_config import build_run_config
from reidbench.harness.tracking import tracking_uri

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def market_root(tmp_path_factory):
    from reidbench.datasets.synthetic import synthesize

    out = tmp_path_factory.mktemp("synth")
    return str(synthesize(out, flavor="market", ids=16, seed=0, workers=1)["market"])


def small_config(tmp_path, market_root, *extra):
    return build_run_config(overrides=[
        "method=baseline", "data.dataset=market1501", f"data.root={market_root}", "data.p=4", "data.k=2",
        "data.num_workers=0", "data.val_fraction=0.25", "backbone.pretrained=null", "optim.epochs_scale=0.25",
        f"output_dir={tmp_path}", "tracking.experiment=harness-test", *extra])


def runs_of(cfg):
    client = MlflowClient(tracking_uri(cfg))
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    return client, client.search_runs([exp.experiment_id])


def test_determinism_exact_resume_and_mlflow_statuses(tmp_path, market_root):
    cfg = small_config(tmp_path, market_root)
    first = train_run(cfg)
    again = train_run(cfg)
    test_keys = sorted(k for k in first if k.startswith("test/"))
    assert test_keys and "test/standard/mAP" in test_keys
    assert {k: first[k] for k in test_keys} == {k: again[k] for k in test_keys}, "same seed, same config, CPU"

    client, runs = runs_of(cfg)
    # A fresh run of the same configuration supersedes the old one: tagged, never deleted.
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    newest, older = sorted(runs, key=lambda r: r.info.start_time, reverse=True)
    assert older.data.tags["superseded"] == newest.info.run_id and "superseded" not in newest.data.tags
    assert first["run_dir"] != again["run_dir"]
    from pathlib import Path

    assert (Path(first["run_dir"]) / "best.safetensors").is_file(), "the superseded run's folder is kept"
    run = newest
    assert run.info.status == "FINISHED" and run.info.run_name == "baseline/default/market1501/0"
    assert {run.data.tags[k] for k in ("method", "ablation", "dataset", "seed")} == {"baseline", "default",
                                                                                   "market1501", "0"}
    assert run.data.params["data.p"] == "4" and run.data.params["method"] == "baseline"
    assert any(k.startswith("params.") for k in run.data.params), "the method's resolved params are logged"
    # dist.use_gpu / optim.amp default to "CUDA if there is one": the run logs what it ran on.
    assert (run.data.params["dist.use_gpu"], run.data.params["optim.amp"]) == ("False", "False")
    assert "train/loss" in run.data.metrics and "val/mAP" in run.data.metrics and "lr" in run.data.metrics
    # what selected the model: market1501 has no official val split, so held-out training identities
    assert (run.data.tags["validation.protocol"], run.data.tags["validation.source"],
            run.data.tags["validation.metric"]) == ("standard", "held-out identities", "val/mAP")
    assert run.data.metrics["test/standard/mAP"] == pytest.approx(first["test/standard/mAP"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "cmc.png"} <= artifacts
    assert (tmp_path / "mlartifacts").is_dir(), "artifacts live beside the SQLite store"
    epochs = len(client.get_metric_history(run.info.run_id, "train/loss"))
    assert epochs >= 2

    # Crash after the first epoch: the run ends FAILED, never RUNNING.
    def crash(metrics):
        raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train_run(cfg, on_epoch=crash)
    client, runs = runs_of(cfg)
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED", "FINISHED"]
    failed_id = next(r.info.run_id for r in runs if r.info.status == "FAILED")

    # Resume continues the same MLflow run and ends exactly where the uninterrupted run did.
    resumed = train_run(cfg, resume=True)
    assert {k: resumed[k] for k in test_keys} == {k: first[k] for k in test_keys}
    client, runs = runs_of(cfg)
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    assert [r.info.run_id for r in runs if "superseded" not in r.data.tags] == [failed_id]
    steps = [m.step for m in client.get_metric_history(failed_id, "train/loss")]
    assert sorted(set(steps)) == list(range(epochs))


def test_resume_with_changed_config_is_refused(tmp_path, market_root):
    cfg = small_config(tmp_path, market_root)

    def crash(metrics):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        train_run(cfg, on_epoch=crash)
    changed = small_config(tmp_path, market_root, "data.k=4")
    with pytest.raises(ConfigError, match=r"data\.k \(2 -> 4\)"):
        train_run(changed, resume=True)


def test_a_run_folder_without_validation_evaluates_its_last_epoch_and_one_with_validation_needs_best(tmp_path):
    import yaml

    from reidbench.harness import checkpoint as ckpt
    from reidbench.harness.evaluation_command import locate

    latest = tmp_path / "checkpoints" / "latest"
    latest.mkdir(parents=True)
    (latest / ckpt.MODEL_FILE).write_bytes(b"")
    (latest / ckpt.CONFIG_FILE).write_text(yaml.safe_dump({"method": "baseline", "data": {"val_fraction": 0.0}}))
    assert locate(tmp_path) == (latest / ckpt.MODEL_FILE, latest)
    (latest / ckpt.CONFIG_FILE).write_text(yaml.safe_dump({"method": "baseline", "data": {"val_fraction": 0.1}}))
    with pytest.raises(FileNotFoundError, match="no best.safetensors"):
        locate(tmp_path)
    (tmp_path / "best.safetensors").write_bytes(b"")
    assert locate(tmp_path) == (tmp_path / "best.safetensors", latest)


def test_eval_command_reproduces_a_trained_run_and_scores_the_untrained_model(tmp_path, market_root, capsys):
    from pathlib import Path

    from reidbench.cli import main

    # A learning rate that moves a random-init backbone in these few steps, and the last epoch: at the
    # default 1e-4 the trained model scored 10.6-11.7 mAP against the untrained one's 11.0.
    cfg = small_config(tmp_path, market_root, "params.image.lr=1e-3", "data.val_fraction=0")
    trained = train_run(cfg)
    run_dir = Path(cfg.output_dir) / cfg.run_name

    def printed_map() -> float:
        line = next(l for l in capsys.readouterr().out.splitlines() if l.strip().startswith("test/standard/mAP"))
        return float(line.split()[-1])

    assert main(["eval", "--checkpoint", str(run_dir)]) == 0
    assert printed_map() == pytest.approx(trained["test/standard/mAP"], abs=0.01)  # printed with 2 decimals

    # The model as built, never trained: the same backbone (random init here) scores lower.
    assert main(["eval", "--untrained", "--method", "baseline", "--dataset", "market1501", "--root", market_root,
                 "backbone.pretrained=null", "data.num_workers=0", "data.val_fraction=0.25"]) == 0
    assert printed_map() < trained["test/standard/mAP"]

    # Test-time options apply to a checkpoint's evaluation: re-ranked and flip-averaged metrics differ.
    assert main(["eval", "--checkpoint", str(run_dir)]) == 0
    plain = [l for l in capsys.readouterr().out.splitlines() if l.strip().startswith("test/")]
    assert main(["eval", "--checkpoint", str(run_dir), "evaluation.flip=true", "evaluation.rerank=true"]) == 0
    tuned = [l for l in capsys.readouterr().out.splitlines() if l.strip().startswith("test/")]
    assert len(plain) == len(tuned) == 5 and plain != tuned

    # A checkpoint's config comes from the checkpoint: flags that would change it are refused, not ignored.
    assert main(["eval", "--checkpoint", str(run_dir), "--seed", "1"]) == 2
    assert "--seed" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(run_dir), "data.k=8"]) == 2
    assert "data.k=8" in capsys.readouterr().err
    assert main(["eval", "--untrained", "--dataset", "market1501"]) == 2
    assert "--method" in capsys.readouterr().err
    # An image model cannot be scored on a text-to-image dataset: refused in one line, before reading it.
    assert main(["eval", "--checkpoint", str(run_dir), "--dataset", "synthetic_pedes"]) == 2
    err = capsys.readouterr().err
    assert "'synthetic_pedes' is a text ReID benchmark" in err and "Traceback" not in err


def _open_store(uri: str) -> None:
    from reidbench.harness.tracking import client_for, experiment_id

    experiment_id(client_for(uri), "race")


def test_processes_opening_one_fresh_store_at_once_all_succeed(tmp_path):
    """Two `reidbench train` commands (or sweep trials) on a new output folder create the
    same mlflow.db at once; unguarded, MLflow's schema migration races and crashes."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [ctx.Process(target=_open_store, args=(uri,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert len(MlflowClient(uri).search_experiments(filter_string="name = 'race'")) == 1


def test_validation_split_mirrors_the_cross_camera_test_protocol():
    from reidbench.datasets.records import Sample
    from reidbench.harness.evaluate import rank_metrics
    from reidbench.harness.validation import split_validation

    # ids 0..9, ids not divisible by 3 seen by two cameras, three images per camera
    train = [Sample(f"{p:04d}_c{c}_{i}.jpg", pid=p, camid=c) for p in range(10) for c in range(1 + (p % 3 > 0))
             for i in range(3)]
    kept, query, gallery = split_validation(train, 0.5, seed=0)
    held = {s.pid for s in gallery}
    assert len(held) == 5
    assert len(kept) + len(gallery) == len(train)
    assert sorted({s.pid for s in kept}) == list(range(len({s.pid for s in kept})))
    two_camera = {p for p in held if p % 3}
    # leave-one-out: every image of a two-camera identity queries the whole held-out set
    assert sorted(s.path for s in query) == sorted(s.path for s in gallery if s.pid in two_camera)
    assert {(s.pid, s.camid) for s in query} == {(p, c) for p in two_camera for c in (0, 1)}
    # every query has a cross-camera positive, so the standard protocol keeps it, and its
    # own image (distance 0) is junk: with every other identity closer than its true
    # matches, R1 must be 0, not the 100 a counted self-match would give
    pid = lambda xs: np.array([s.pid for s in xs])  # noqa: E731
    cam = lambda xs: np.array([s.camid for s in xs])  # noqa: E731
    same = pid(query)[:, None] == pid(gallery)[None, :]
    dist = np.where(same, 1.0, 0.5)
    dist[np.array([[q.path == g.path for g in gallery] for q in query])] = 0.0
    result = rank_metrics(dist, pid(query), pid(gallery), cam(query), cam(gallery))
    assert result.num_valid == len(query) > 0
    assert result.summary()["R1"] == 0.0

    # no held-out identity seen by two cameras: fall back to camid -1 queries (nothing is junk)
    one_camera = [Sample(f"{p:04d}_{i}.jpg", pid=p, camid=0) for p in range(10) for i in range(3)]
    _, query, gallery = split_validation(one_camera, 0.5, seed=0)
    assert len(query) == 5 and {s.camid for s in query} == {-1} and len(gallery) == 10


def test_epochs_scale_stretches_the_whole_schedule():
    """Four times the epochs must keep the warmup and the lr drops at the same fractions
    of the run (unscaled milestones would freeze the last three quarters at lr x 0.01)."""
    from reidbench.harness.optim import lr_factor, scale_schedule
    from reidbench.methods.base import Stage

    stage = Stage(name="image", epochs=12, lr=1e-4, trainable=("",), schedule="steps", warmup_epochs=2,
                  warmup_factor=0.1, milestones=(8, 11), gamma=0.1)
    long = scale_schedule(stage, 4.0)
    assert (long.epochs, long.warmup_epochs, long.milestones) == (48, 8, (32, 44))
    curve = [lr_factor(stage, e, stage.epochs) for e in range(stage.epochs)]
    stretched = [lr_factor(long, e, long.epochs) for e in range(0, long.epochs, 4)]
    assert stretched == pytest.approx(curve)
    short = scale_schedule(stage, 0.25)
    assert (short.epochs, short.warmup_epochs, short.milestones) == (3, 0, (2, 3))
    assert scale_schedule(stage, 1.0) is stage


def test_loader_workers_default_to_none_on_cpu_and_respect_a_request():
    import torch

    from reidbench.harness.trainer import loader_workers

    assert loader_workers(None, torch.device("cpu")) == 0  # the matmuls already use every core
    assert loader_workers(3, torch.device("cpu")) == 3
    assert 0 <= loader_workers(None, torch.device("cuda", 0), world_size=1) <= 8
    with pytest.raises(ValueError, match="data.num_workers must be >= 0"):
        loader_workers(-1, torch.device("cpu"))
