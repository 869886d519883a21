"""Ray Train glue: DDP or DeepSpeed ZeRO worker groups around the one training loop.

A single-worker DDP run does not go through Ray Train at all: ``launch`` calls the
loop in-process (the worker group costs ~20 s of start-up here and buys nothing for
one worker). Everything else builds a ``TorchTrainer`` whose workers run ``fit``.
Checkpoints then go through ``ray.train.report`` and come back from
``ray.train.get_checkpoint()``; rank 0 logs to MLflow.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch

from ..config import from_dict
from .checkpoint import STATE_FILE, CheckpointError, find_resumable, is_complete, manifest_problem, write_manifest
from .run_config import RunConfig
from .trainer import WorkerEnv, fit
from .tracking import MlflowTracker


class LocalStore:
    """Epoch checkpoints in ``<folder>/latest`` (replaced atomically each epoch). ``latest()``
    falls back to ``latest.tmp`` / ``latest.old`` when ``latest`` is incomplete
    (``checkpoint.find_resumable``; ``note`` then says which it took) and raises when
    only incomplete ones exist."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.note = ""

    def latest(self) -> Path | None:
        path, self.note = find_resumable(self.folder / "latest")
        return path

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
    (fp16 needs loss scaling and is not offered on CPU). The optimizer's ``lr`` and
    ``weight_decay`` here are only defaults: every group ``param_groups`` builds sets its
    own. Under ZeRO-3, parameters of at most ``dist.zero3_persistence`` elements stay
    whole on every rank (DeepSpeed's ``stage3_param_persistence_threshold``); 0-d ones
    always do (see ``deepspeed_engine``).
    """
    opt_type = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}[stage.optimizer]
    params = {"lr": stage.lr, "weight_decay": stage.weight_decay}
    if stage.optimizer != "sgd":
        params["torch_adam"] = True
        params["adam_w_mode"] = stage.optimizer == "adamw"
    else:
        params["momentum"] = 0.9
    zero: dict = {"stage": cfg.dist.zero_stage}
    if cfg.dist.zero_stage == 3:
        zero["stage3_param_persistence_threshold"] = max(1, cfg.dist.zero3_persistence)
    return {
        "train_micro_batch_size_per_gpu": (cfg.data.p // cfg.dist.workers) * cfg.data.k,
        "gradient_accumulation_steps": cfg.optim.grad_accum,
        "gradient_clipping": cfg.optim.grad_clip or 0.0,
        "optimizer": {"type": opt_type, "params": params},
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.optim.amp},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def deepspeed_engine(step_module, groups: list[dict], stage, cfg: RunConfig):
    """A DeepSpeed engine over ``step_module`` whose optimizer holds exactly ``groups``
    (``optim.param_groups``): the same lrs, ``base_lr`` and weight decays as the plain
    optimizer and DDP, in the same order, under ZeRO 1, 2 and 3."""
    import deepspeed

    # DeepSpeed broadcasts every parameter viewed as bytes, which fails on 0-d tensors (CLIP's
    # logit_scale). Those are identical on every rank already (same seed, same weights), so they
    # are marked as not to be broadcast (the attribute DeepSpeed itself checks). ZeRO-3 broadcasts
    # them once more when it partitions them: there they are 1-element vectors while DeepSpeed
    # converts them, and 0-d again (data and the shape DeepSpeed gathers into) afterwards. They stay
    # whole on every rank (persistence threshold >= 1): methods read them outside any forward of
    # their owner module, where ZeRO-3 would hand out an empty partition.
    scalars = []
    for p in step_module.parameters():
        if p.dim() == 0:
            p.ds_optim_param = True
            if cfg.dist.zero_stage == 3 and not hasattr(p, "ds_id"):
                p.data = p.data.reshape(1)
                scalars.append(p)
    try:
        engine, _, _, _ = deepspeed.initialize(model=step_module, model_parameters=groups,
                                               config=deepspeed_config(cfg, stage))
    finally:
        for p in scalars:
            if hasattr(p, "ds_shape"):
                p.ds_shape = torch.Size([])
            if p.numel() == 1:
                p.data = p.data.reshape(())
    built = [(g["lr"], g["base_lr"], g["weight_decay"]) for g in groups]
    got = [(g.get("lr"), g.get("base_lr"), g.get("weight_decay")) for g in engine.optimizer.param_groups]
    if got != built:  # a DeepSpeed release that rebuilt the groups would silently change every lr
        raise RuntimeError(f"DeepSpeed's optimizer groups (lr, base_lr, weight_decay) {got} differ from the "
                           f"stage's {built}")
    return engine


def partitions_weights(engine) -> bool:
    """Whether ``engine`` shards the parameters themselves (ZeRO-3): then every read of the
    full weights (a forward, a state dict) is a collective that all ranks enter together."""
    return engine is not None and bool(engine.zero_optimization_partition_weights())


def _module_params(method: torch.nn.Module):
    """(key prefix, module, its own named parameters) for every module path, shared ones included."""
    for prefix, module in method.named_modules(remove_duplicate=False):
        yield (f"{prefix}." if prefix else ""), module, list(module.named_parameters(recurse=False))


@contextmanager
def _all_partitioned(engine):
    # As DeepSpeed's own consolidation: start from fully partitioned weights, and gather the
    # persistent (small) parameters back afterwards.
    engine.optimizer.checkpoint_event_prologue()
    try:
        yield
    finally:
        engine.optimizer.checkpoint_event_epilogue()


def gathered_state_dict(engine, method: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """``method``'s full state dict on CPU under ZeRO-3, gathered one module at a time so
    that no rank holds more than one module's full weights: rank 0 gets it, the other
    ranks ``None``. Every rank must call it. (DeepSpeed's
    ``_zero3_consolidated_16bit_state_dict`` does the same but broadcasts each module back
    from rank 0, which fails on 0-d parameters.)"""
    import deepspeed
    import torch.distributed as dist

    main = dist.get_rank() == 0
    state: dict[str, torch.Tensor] = {}
    first_key: dict[int, str] = {}
    with _all_partitioned(engine):
        for prefix, module, params in _module_params(method):
            with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None, enabled=bool(params)):
                if not main:
                    continue
                for name, p in params:
                    if p.ds_id in first_key:  # tied weights stay one tensor
                        state[prefix + name] = state[first_key[p.ds_id]]
                    else:
                        state[prefix + name] = p.detach().cpu().clone()
                        first_key[p.ds_id] = prefix + name
                for name, b in module.named_buffers(recurse=False):
                    if b is not None and name not in module._non_persistent_buffers_set:
                        state[prefix + name] = b.detach().cpu().clone()
    return state if main else None


def load_gathered_state_dict(engine, method: torch.nn.Module, state: dict[str, torch.Tensor] | None) -> None:
    """Rank 0's ``state`` (a full state dict; ``None`` elsewhere) becomes ``method``'s
    weights on every rank under ZeRO-3: each module's parameters are gathered, rank 0
    overwrites them, DeepSpeed broadcasts and re-partitions them. Buffers are copied on
    rank 0 only (the rank whose features are scored). Only for evaluation after the
    last step: the optimizer's fp32 master partitions keep the trained values."""
    import deepspeed
    import torch.distributed as dist

    main = dist.get_rank() == 0
    if main:
        expected = set(method.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise RuntimeError(f"weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with _all_partitioned(engine), torch.no_grad():
        for prefix, module, params in _module_params(method):
            with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=0, enabled=bool(params)):
                if main:
                    for name, p in params:
                        p.copy_(state[prefix + name].to(p.device, p.dtype))
                    for name, b in module.named_buffers(recurse=False):
                        if b is not None and prefix + name in state:
                            b.copy_(state[prefix + name].to(b.device, b.dtype))
                # DeepSpeed broadcasts the result viewed as bytes, which a 0-d tensor cannot be.
                for _, p in params:
                    if p.dim() == 0:
                        p.data = p.data.reshape(1)


@contextmanager
def gathering_on_access(engine):
    """Under ZeRO-3, gather a parameter when code reads it outside a forward of the module
    that owns it (CLIP's position table, a prompt learner's context read by the method), as
    DeepSpeed does inside the engine's own forward; for calls that bypass the engine
    (evaluation, ``begin_stage``). Every rank must make the same calls. No-op otherwise."""
    if not partitions_weights(engine):
        yield
        return
    from deepspeed.runtime.zero.parameter_offload import ZeROOrderedDict, ensure_zero_ordered_dict

    modules = list(engine.module.modules())
    for module in modules:
        ensure_zero_ordered_dict(module)
        module._parameters._in_forward = True
    try:
        yield
    finally:
        for module in modules:
            if isinstance(module._parameters, ZeROOrderedDict):
                module._parameters._in_forward = False


def agree(value, engine):
    """Rank 0's ``value`` on every rank when ``engine`` partitions the weights (all ranks
    then evaluate together and must take the same branches); ``value`` otherwise."""
    if not partitions_weights(engine):
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _worker_loop(config: dict) -> None:
    import ray.train
    import ray.train.torch

    cfg = from_dict(RunConfig, config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.dist.use_gpu else torch.device("cpu")
    tracker = MlflowTracker(config["uri"], config["run_id"]) if rank == 0 else None
    key = bytes.fromhex(config["checkpoint_key"]) if config.get("checkpoint_key") else None
    env = WorkerEnv(rank=rank, world_size=world, device=device, store=RayStore(rank), tracker=tracker,
                    run_dir=Path(config["run_dir"]), checkpoint_key=key)
    metrics = fit(cfg, env)
    ray.train.report({k: v for k, v in metrics.items() if k.startswith("test/")} if rank == 0 else {})


# ---------------------------------------------------------------- DeepSpeed shard manifests
# DeepSpeed's load_checkpoint unpickles its shards (torch.load with weights_only=False), so a shard
# can run code. Every rank therefore signs what it saved with the run's key (run.key in the run
# folder, never inside a checkpoint): an HMAC over the SHA-256 of each file. A shard set is only
# loaded when every file is covered by a signed manifest whose hashes match.
DS_MANIFEST_PREFIX = "manifest-rank"
TRUST_ENV = "REIDBENCH_TRUST_CHECKPOINTS"


def sign_deepspeed_shards(folder: Path, rank: int, key: bytes) -> None:
    """After ``engine.save_checkpoint(folder)``: this rank's manifest over the files it sees
    (on Ray Train each rank writes into a folder of its own, merged at ``report``)."""
    files = [str(p.relative_to(folder)) for p in sorted(folder.rglob("*"))
             if p.is_file() and not p.name.startswith(DS_MANIFEST_PREFIX)]
    write_manifest(folder, files, key=key, name=f"{DS_MANIFEST_PREFIX}{rank}.json")


def verify_deepspeed_shards(folder: Path, key: bytes | None) -> None:
    """Refuse (``CheckpointError``) a DeepSpeed shard folder that this run did not sign."""
    import json
    import os

    if os.environ.get(TRUST_ENV) == "1":
        return
    risk = (f"DeepSpeed's load_checkpoint unpickles these files (torch.load with weights_only=False), which can "
            f"execute code, so only shards signed by this run (its run.key) are loaded. If you trust where {folder} "
            f"came from, set {TRUST_ENV}=1 to load it anyway")
    if key is None:
        raise CheckpointError(f"refusing to load DeepSpeed checkpoint {folder}: this run has no signing key. {risk}")
    manifests = sorted(folder.glob(f"{DS_MANIFEST_PREFIX}*.json"))
    if not manifests:
        raise CheckpointError(f"refusing to load DeepSpeed checkpoint {folder}: it has no signed manifest. {risk}")
    covered: set[str] = set()
    for m in manifests:
        problem = manifest_problem(folder, m.name, key=key)
        if problem is not None:
            raise CheckpointError(f"refusing to load DeepSpeed checkpoint {folder}: {problem}. {risk}")
        covered |= set(json.loads(m.read_text())["files"])
    unsigned = [str(p.relative_to(folder)) for p in sorted(folder.rglob("*"))
                if p.is_file() and not p.name.startswith(DS_MANIFEST_PREFIX) and str(p.relative_to(folder)) not in covered]
    if unsigned:
        raise CheckpointError(f"refusing to load DeepSpeed checkpoint {folder}: {len(unsigned)} file(s) no manifest "
                              f"signs ({', '.join(unsigned[:3])}). {risk}")


def ray_run_name(cfg: RunConfig) -> str:
    """Ray Train's run name inside the run folder's ``ray/`` storage (one run folder, one name)."""
    return "train"


def launch_ray(cfg: RunConfig, cfg_dict: dict, uri: str, run_id: str, in_tune: bool = False,
               run_dir: Path | None = None, checkpoint_key: bytes | None = None) -> dict[str, float]:
    """Run ``fit`` on a Ray Train worker group.

    Resuming needs nothing here: Train V2 restores a run from the latest checkpoint under the
    same ``(storage_path, name)`` (and rejects ``resume_from_checkpoint``); the storage is the
    run folder's ``ray/``, and a fresh run always gets a fresh run folder (``api.train_run``)."""
    import ray
    from ray.train import CheckpointConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    if not ray.is_initialized():
        ray.init(num_cpus=max(cfg.dist.workers, 2) if not cfg.dist.use_gpu else None, log_to_driver=True,
                 include_dashboard=False)
    run_dir = Path(run_dir if run_dir is not None else Path(cfg.output_dir) / cfg.run_name).resolve()
    storage = str(run_dir / "ray")
    name = ray_run_name(cfg)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"cfg": cfg_dict, "uri": uri, "run_id": run_id, "run_dir": str(run_dir),
                           "checkpoint_key": checkpoint_key.hex() if checkpoint_key else None},
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
    folders = [f for f in folders if (f / STATE_FILE).exists() and is_complete(f)]
    return ray.train.Checkpoint.from_directory(str(folders[-1])) if folders else None
