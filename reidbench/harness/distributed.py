"""Ray Train glue: DDP or DeepSpeed ZeRO worker groups around the one training loop.

A single-worker DDP run does not go through Ray Train at all: ``launch`` calls the
loop in-process (the worker group costs ~20 s of start-up here and buys nothing for
one worker). Everything else builds a ``TorchTrainer`` whose workers run ``fit``.
Checkpoints then go through ``ray.train.report`` and come back from
``ray.train.get_checkpoint()``; rank 0 logs to MLflow.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import torch

from ..config import from_dict
from .checkpoint import STATE_FILE
from .run_config import RunConfig
from .trainer import WorkerEnv, fit
from .tracking import MlflowTracker


class LocalStore:
    """Epoch checkpoints in ``<folder>/latest`` (replaced atomically each epoch)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def latest(self) -> Path | None:
        path = self.folder / "latest"
        return path if (path / STATE_FILE).exists() else None

    def save(self, write: Callable[[Path], None], metrics: dict[str, float]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write(self.folder / "latest")


class RayStore:
    """Checkpoints through Ray Train: every rank calls ``report`` (a barrier); rank 0
    writes the weights and state, and under DeepSpeed every rank adds its shard."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def latest(self) -> Path | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        return Path(checkpoint.to_directory())

    def save(self, write: Callable[[Path], None], metrics: dict[str, float]) -> None:
        import ray.train

        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "checkpoint"
            write(folder)
            checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if folder.exists() else None
            ray.train.report(metrics, checkpoint=checkpoint)


def deepspeed_config(cfg: RunConfig, stage) -> dict:
    """DeepSpeed config generated from the harness config.

    ``torch_adam`` avoids a minute of fused-Adam compilation on CPU; bf16 when AMP is on
    (fp16 needs loss scaling and is not offered on CPU).
    """
    opt_type = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}[stage.optimizer]
    params = {"lr": stage.lr, "weight_decay": stage.weight_decay}
    if stage.optimizer != "sgd":
        params["torch_adam"] = True
        params["adam_w_mode"] = stage.optimizer == "adamw"
    else:
        params["momentum"] = 0.9
    return {
        "train_micro_batch_size_per_gpu": (cfg.data.p // cfg.dist.workers) * cfg.data.k,
        "gradient_accumulation_steps": cfg.optim.grad_accum,
        "gradient_clipping": cfg.optim.grad_clip or 0.0,
        "optimizer": {"type": opt_type, "params": params},
        "zero_optimization": {"stage": cfg.dist.zero_stage},
        "bf16": {"enabled": cfg.optim.amp},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def deepspeed_engine(step_module, stage, cfg: RunConfig):
    import deepspeed

    if cfg.dist.zero_stage == 3:
        raise ValueError("dist.zero_stage=3 partitions the parameters, and the harness evaluates and checkpoints "
                         "full weights on rank 0; use zero_stage 1 or 2")
    # DeepSpeed broadcasts every parameter viewed as bytes, which fails on 0-d tensors (CLIP's
    # logit_scale). Those are identical on every rank already (same seed, same weights), so they
    # are marked as not to be broadcast (the attribute DeepSpeed itself checks).
    for p in step_module.parameters():
        if p.dim() == 0:
            p.ds_optim_param = True
    trainable = [p for p in step_module.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=step_module, model_parameters=trainable,
                                           config=deepspeed_config(cfg, stage))
    for group in engine.optimizer.param_groups:
        group.setdefault("base_lr", stage.lr)
    return engine


def _worker_loop(config: dict) -> None:
    import ray.train
    import ray.train.torch

    cfg = from_dict(RunConfig, config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.dist.use_gpu else torch.device("cpu")
    tracker = MlflowTracker(config["uri"], config["run_id"]) if rank == 0 else None
    env = WorkerEnv(rank=rank, world_size=world, device=device, store=RayStore(rank), tracker=tracker)
    metrics = fit(cfg, env)
    ray.train.report({k: v for k, v in metrics.items() if k.startswith("test/")} if rank == 0 else {})


def ray_run_name(cfg: RunConfig) -> str:
    return cfg.run_name.replace("/", "__")


def launch_ray(cfg: RunConfig, cfg_dict: dict, uri: str, run_id: str, in_tune: bool = False) -> dict[str, float]:
    """Run ``fit`` on a Ray Train worker group.

    Resuming needs nothing here: Train V2 restores a run from the latest checkpoint under the
    same ``(storage_path, name)`` (and rejects ``resume_from_checkpoint``); a fresh run's folder
    was removed by ``train_run`` beforehand."""
    import ray
    from ray.train import CheckpointConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    if not ray.is_initialized():
        ray.init(num_cpus=max(cfg.dist.workers, 2) if not cfg.dist.use_gpu else None, log_to_driver=True,
                 include_dashboard=False)
    storage = str((Path(cfg.output_dir) / "ray").resolve())
    name = ray_run_name(cfg)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"cfg": cfg_dict, "uri": uri, "run_id": run_id},
        torch_config=TorchConfig(backend="nccl" if cfg.dist.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.dist.workers, use_gpu=cfg.dist.use_gpu,
                                     resources_per_worker=None if cfg.dist.use_gpu else {"CPU": 1}),
        run_config=RayRunConfig(name=name, storage_path=storage, checkpoint_config=CheckpointConfig(num_to_keep=2),
                                callbacks=[TuneReportCallback()] if in_tune else None),
    )
    trainer.fit()
    # Rank 0 logged the final test metrics to the MLflow run; Ray's Result.metrics holds the
    # last report that carried a checkpoint (an epoch), not the final one.
    from .tracking import client_for

    metrics = client_for(uri).get_run(run_id).data.metrics
    return {k: v for k, v in metrics.items() if k.startswith("test/")}


def latest_ray_checkpoint(storage: str, name: str):
    """The newest checkpoint folder Ray Train wrote for this run name, or None."""
    import ray.train

    folders = sorted((Path(storage) / name).glob("checkpoint_*"), key=lambda p: p.stat().st_mtime)
    folders = [f for f in folders if (f / STATE_FILE).exists()]
    return ray.train.Checkpoint.from_directory(str(folders[-1])) if folders else None
