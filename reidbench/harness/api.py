"""``train_run``: one (method, ablation, dataset, seed) run, from config to MLflow.

This is what ``reidbench train``, the demo and the sweeps call. It opens (or, on
resume, continues) the MLflow run, runs the loop in-process or on a Ray Train
worker group, and always closes the run: FINISHED, FAILED, or KILLED on Ctrl-C.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from ..config import ConfigError, diff_keys
from . import checkpoint as ckpt
from .distributed import LocalStore, launch_ray, latest_ray_checkpoint, ray_run_name
from .run_config import RunConfig, resolved_dict
from .tracking import MlflowTracker, close_run, open_run
from .trainer import WorkerEnv, fit, local_device, prepare_data, settle_device

# Keys that may change between a run and its resumption without changing its result.
RESUME_FREE_KEYS = ("data.num_workers", "data.eval_batch_size", "tracking.tracking_uri", "dist.use_gpu",
                    "optim.compile")


def uses_ray(cfg: RunConfig) -> bool:
    """One DDP worker runs in-process; more workers, or DeepSpeed, need a Ray Train worker group."""
    return cfg.dist.workers > 1 or cfg.dist.strategy == "deepspeed"


def resolve_device(cfg: RunConfig) -> RunConfig:
    """``dist.use_gpu`` and ``optim.amp`` settled before the run is logged, so MLflow records
    what it ran on: an in-process run uses this process's CUDA device if any; a Ray worker
    group uses GPUs if the Ray cluster it joins has them (this machine's, before Ray starts)."""
    use = cfg.dist.use_gpu
    if not uses_ray(cfg):
        use = local_device(use).type == "cuda"
    elif use is None:
        import ray
        import torch

        use = ray.cluster_resources().get("GPU", 0) > 0 if ray.is_initialized() else torch.cuda.is_available()
    return settle_device(cfg, bool(use))


def checkpoint_folder(cfg: RunConfig) -> Path:
    return Path(cfg.output_dir) / cfg.run_name / "checkpoints"


def latest_checkpoint(cfg: RunConfig) -> Path | None:
    if uses_ray(cfg):
        found = latest_ray_checkpoint(str((Path(cfg.output_dir) / "ray").resolve()), ray_run_name(cfg))
        return Path(found.path) if found is not None else None
    return LocalStore(checkpoint_folder(cfg)).latest()


def check_resume(cfg: RunConfig, resolved: dict, folder: Path, force: bool) -> None:
    """Refuse to resume a checkpoint written under another config (unless ``force``)."""
    saved = ckpt.read_config(folder)
    changed = [k for k in diff_keys(saved, resolved) if k not in RESUME_FREE_KEYS]
    if changed and not force:
        lines = ", ".join(f"{k} ({_get(saved, k)!r} -> {_get(resolved, k)!r})" for k in changed[:10])
        raise ConfigError(f"refusing to resume {folder}: the config differs in {lines}. "
                          "Resume with the saved config, start afresh without --resume, or pass --force.")


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return "<unset>"
        d = d[part]
    return d


def train_run(cfg: RunConfig, resume: bool = False, force: bool = False, progress: bool = False,
              on_epoch: Callable[[dict[str, float]], None] | None = None, in_tune: bool = False) -> dict:
    """Train and evaluate one run; return its final metrics (``test/<protocol>/<metric>`` among
    them) and ``run_id``. ``on_epoch`` sees each epoch's metrics (in-process runs); inside a
    Tune trial (``in_tune``) a worker group reports to Tune through ``TuneReportCallback``."""
    # Bad data (a task mismatch, a texts file, a missing requirement) stops here: nothing removed, no MLflow run.
    prepare_data(cfg)
    cfg = resolve_device(cfg)
    resolved = resolved_dict(cfg)
    existing = latest_checkpoint(cfg)
    if resume and existing is not None:
        check_resume(cfg, resolved, existing, force)
    elif not resume:
        # A fresh run replaces whatever an earlier run of the same name left behind.
        shutil.rmtree(Path(cfg.output_dir) / cfg.run_name, ignore_errors=True)
        shutil.rmtree(Path(cfg.output_dir) / "ray" / ray_run_name(cfg), ignore_errors=True)
    uri, run_id = open_run(cfg, resolved, resume=resume and existing is not None)
    status = "FAILED"
    try:
        if uses_ray(cfg):
            metrics = launch_ray(cfg, resolved, uri, run_id, in_tune=in_tune)
        else:
            env = WorkerEnv(device=local_device(cfg.dist.use_gpu), store=LocalStore(checkpoint_folder(cfg)),
                            tracker=MlflowTracker(uri, run_id), progress=progress, on_epoch=on_epoch)
            metrics = fit(cfg, env)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        close_run(uri, run_id, status)
    metrics["run_id"] = run_id
    return metrics
