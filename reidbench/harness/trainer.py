"""One training loop for every method (docs/design.md: config -> dataset -> samples -> sampler
+ transforms -> method -> trainer -> evaluation -> MLflow).

The loop knows nothing about which method it runs: it asks the method for its
stages, freezes what a stage does not train, builds the optimizer and learning
rate schedule of the stage, sums the method's named loss terms with the stage's
weights, checkpoints every epoch, selects the model on the dataset's validation
(``validation.plan_validation``: its headline protocol, on its official val split or on
held-out training identities), and evaluates the test split once at the end. A run whose
method cannot handle the dataset's task is refused before anything is read or written
(``check_run``).

It runs in-process for a single worker and inside Ray Train workers otherwise;
``WorkerEnv`` is the only thing that differs.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import numpy as np
import torch
from torch import nn

from ..datasets import ReidDataset, Sample, build_dataset
from ..methods import LOGGED, DataSpec, Method, Stage, get_method, list_methods
from . import checkpoint as ckpt
from .optim import build_optimizer, lr_factor, param_groups, scale_schedule, set_lr, set_trainable, stage_epochs
from .tracking import INIT_TAG
from .validation import SELECTION_METRIC, Validation, plan_validation
from .evaluate import flip_average, rank_metrics_from_features, retrieval_metrics
from .requirements import check_requirements, required_text_kinds
from .rerank import k_reciprocal_rerank
from .run_config import EvalConfig, RunConfig, method_config, resolved_dict

DEEPSPEED_DIR = "deepspeed"


class CheckpointStore(Protocol):
    """Where epoch checkpoints go: a local folder, or Ray Train's storage."""

    def latest(self) -> Path | None: ...

    def save(self, write: Callable[[Path], None], metrics: dict[str, float]) -> None: ...


class Tracker(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...


@dataclass
class WorkerEnv:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    store: CheckpointStore | None = None
    tracker: Tracker | None = None  # rank 0 only
    progress: bool = False
    on_epoch: Callable[[dict[str, float]], None] | None = None  # e.g. a sweep's report
    # Where best.safetensors goes (api.train_run's run folder); None: <output_dir>/<run_name>.
    run_dir: Path | None = None
    # The run's key that signs DeepSpeed shards at save time and is checked before they are loaded.
    checkpoint_key: bytes | None = None
    # Polled after every optimizer step: True (a SIGTERM/SIGINT arrived) ends the run after that
    # step with a mid-epoch checkpoint, raising TrainingInterrupted (in-process runs only).
    stop: Callable[[], bool] | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class TrainingInterrupted(Exception):
    """Training stopped on request (a signal) after a step; a checkpoint to resume from was written."""

    def __init__(self, where: str, checkpoint: Path | None) -> None:
        super().__init__(f"interrupted at {where}; " + (f"checkpoint written to {checkpoint}, continue with --resume"
                                                        if checkpoint else "no checkpoint store"))
        self.where = where
        self.checkpoint = checkpoint


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def loader_workers(requested: int | None, device: torch.device, world_size: int = 1) -> int:
    """DataLoader worker processes for training: ``requested`` when given; otherwise
    none on CPU, where the model's matmuls already occupy every core (measured on 2
    cores, tiny preset: 5.6 s an epoch with 0 workers, 7.2 s with 1 or 2), and on a GPU
    the CPU cores this rank has to itself, minus one for the training process, at
    most 8."""
    if requested is not None:
        if requested < 0:
            raise ValueError(f"data.num_workers must be >= 0 (or null for automatic), got {requested}")
        return requested
    if device.type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores // max(world_size, 1) - 1))


def local_device(use_gpu: bool | None) -> torch.device:
    """This process's device for ``dist.use_gpu``: true needs CUDA, None takes it when present."""
    if use_gpu and not torch.cuda.is_available():
        raise RuntimeError("dist.use_gpu=true, but torch sees no CUDA device here (torch.cuda.is_available() is "
                           f"False, torch {torch.__version__}, CUDA_VISIBLE_DEVICES="
                           f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r}); set dist.use_gpu=false or "
                           "leave it unset to train on the CPU")
    if use_gpu is False or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def settle_device(cfg: RunConfig, use_gpu: bool) -> RunConfig:
    """``cfg`` with ``dist.use_gpu`` decided and ``optim.amp`` unset (None) turned on exactly on GPU."""
    amp = use_gpu if cfg.optim.amp is None else cfg.optim.amp
    return replace(cfg, dist=replace(cfg.dist, use_gpu=use_gpu), optim=replace(cfg.optim, amp=amp))


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class _StepModule(nn.Module):
    """Lets DDP / DeepSpeed wrap a method: their hooks fire on ``forward``."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method = method

    def forward(self, batch: dict, stage: Stage) -> dict[str, torch.Tensor]:
        return self.method.training_step(batch, stage)


@torch.no_grad()
def embed(method: Method, loader: Iterable[dict], device: torch.device, text: bool = False,
          flip: bool = False) -> Any:
    method.eval()
    chunks = []
    for batch in loader:
        batch = to_device(batch, device)
        if text:
            chunks.append(method.embed_text(batch))
        else:
            chunks.append(flip_average(method.embed_image, batch) if flip else method.embed_image(batch))
    if isinstance(chunks[0], dict):
        return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
    return torch.cat(chunks)


def evaluate_retrieval(method: Method, query: list[Sample], gallery: list[Sample], protocol: str,
                       cfg: RunConfig, image_size: tuple[int, int], device: torch.device,
                       test_time: bool = False) -> Any:
    """Embed query and gallery with the method and score them with the evaluation engine,
    with the method's own ``distance`` where it defines one (cosine otherwise), text-to-image
    included. With ``test_time``, ``cfg.evaluation``'s flip averaging and re-ranking apply;
    re-ranking a text-to-image protocol is refused (see :func:`check_run`)."""
    from ..datasets.loader import build_eval_loader, build_text_loader

    bs = cfg.data.eval_batch_size
    options = cfg.evaluation if test_time else EvalConfig()
    if protocol == "t2i" and options.rerank:
        raise ValueError(RERANK_T2I)
    own_distance = type(method).distance is not Method.distance
    metric = method.distance if own_distance else "cosine"
    pixels = eval_pixels(cfg, method)
    kinds = method.eval_text_kinds()  # texts the method declares it reads at test time, and no others
    gf = embed(method, build_eval_loader(gallery, image_size, bs, text_kinds=kinds, **pixels), device,
               flip=options.flip)
    if protocol == "t2i":
        qf = embed(method, build_text_loader(query, bs), device, text=True)
        return retrieval_metrics(qf, gf, [s.pid for s in query], [s.pid for s in gallery], metric=metric)
    qf = embed(method, build_eval_loader(query, image_size, bs, text_kinds=kinds, **pixels), device,
               flip=options.flip)
    labels = (np.array([s.pid for s in query]), np.array([s.pid for s in gallery]),
              np.array([s.camid for s in query]), np.array([s.camid for s in gallery]))
    if options.rerank:
        reranked = k_reciprocal_rerank(qf, gf, options.k1, options.k2, options.lambda_value, metric=metric)
        return reranked.rank_metrics(*labels, _clothes(query), _clothes(gallery), protocol=protocol)
    return rank_metrics_from_features(qf, gf, *labels, q_clothes=_clothes(query), g_clothes=_clothes(gallery),
                                      protocol=protocol, metric=metric)


def pixel_statistics(cfg: RunConfig, method: Method) -> dict[str, tuple[float, ...]]:
    """``mean``/``std`` the loaders normalise with: ``data.pixel_mean/std`` when set (a
    method's ``DATA_RECIPE`` sets CLIP-ReID's 0.5), else the backbone's own statistics (CLIP's
    for a backbone that names none)."""
    from ..datasets.transforms import CLIP_MEAN, CLIP_STD

    if cfg.data.pixel_mean is not None:
        return {"mean": tuple(cfg.data.pixel_mean), "std": tuple(cfg.data.pixel_std)}
    backbone = method.backbone
    return {"mean": tuple(getattr(backbone, "image_mean", CLIP_MEAN)),
            "std": tuple(getattr(backbone, "image_std", CLIP_STD))}


def eval_pixels(cfg: RunConfig, method: Method) -> dict[str, Any]:
    """Keyword arguments of ``build_eval_loader`` for this run's normalisation and test-time resize."""
    return {**pixel_statistics(cfg, method), "interpolation": cfg.data.eval_interpolation}


def selection_notice(cfg: RunConfig, validation: Validation) -> str:
    """The line a run prints when it starts: what selects its model."""
    if validation.enabled:
        return (f"[{cfg.run_name}] model selection: best validation {SELECTION_METRIC} "
                f"({validation.protocol} protocol, {validation.source}); data.val_fraction=0 keeps the last epoch")
    why = "the paper preset's default, as the papers report" if cfg.preset == "paper" else "data.val_fraction=0"
    return (f"[{cfg.run_name}] model selection: none, the last epoch is kept ({why}); "
            "data.val_fraction=0.1 selects the epoch on held-out identities instead")


def _clothes(samples: list[Sample]) -> np.ndarray | None:
    if any(s.clothes_id is None for s in samples):
        return None
    return np.array([s.clothes_id for s in samples])


@dataclass
class Prepared:
    """Everything a run builds before its first step."""

    dataset: ReidDataset
    train: list[Sample]
    validation: Validation  # what selects the model (validation.plan_validation)
    method: Method
    image_size: tuple[int, int]


def load_dataset(cfg: RunConfig) -> ReidDataset:
    """The configured dataset, with ``data.texts`` merged over its own texts; a ``synthetic_*``
    one without a root is generated (cached) per ``data.synthetic``."""
    from dataclasses import asdict

    from ..datasets.synthetic_sets import SYNTHETIC, synthetic_root
    from ..datasets.texts import apply_texts_files

    root = cfg.data.root
    if root is None and cfg.data.dataset in SYNTHETIC:
        root = str(synthetic_root(SYNTHETIC[cfg.data.dataset][0], asdict(cfg.data.synthetic)))
    return apply_texts_files(build_dataset(cfg.data.dataset, root), cfg.data.texts)


# k-reciprocal re-ranking needs query-query and gallery-gallery neighbourhoods; for text
# queries that means text-text distances from a model trained only on text-image pairs, and
# no text-to-image benchmark reports re-ranked numbers to check an implementation against.
RERANK_T2I = ("evaluation.rerank=true is not supported on text-to-image protocols (k-reciprocal re-ranking "
              "is defined for image-to-image retrieval); set evaluation.rerank=false")


def check_run(cfg: RunConfig, task: str | None = None) -> None:
    """Refuse, before anything is read, generated or written, a run whose method cannot handle
    the dataset's task (``task``: the dataset's, from the registry when not given) or whose
    test-time options do not apply to it."""
    from ..datasets.registry import dataset_task

    task = task or dataset_task(cfg.data.dataset)
    method_cls = get_method(cfg.method)
    if task not in method_cls.tasks:
        raise ValueError(f"method {cfg.method!r} handles {' and '.join(method_cls.tasks)} ReID, but dataset "
                         f"{cfg.data.dataset!r} is a {task} ReID benchmark; pick a {task} method "
                         f"({', '.join(m for m in list_methods() if task in get_method(m).tasks) or 'none registered'})")
    if task == "text" and cfg.evaluation.rerank:
        raise ValueError(f"dataset {cfg.data.dataset!r}: {RERANK_T2I}")


def prepare_data(cfg: RunConfig) -> tuple[ReidDataset, list[Sample], Validation]:
    """Everything a run checks of its data before a model exists: :func:`check_run`
    (before the dataset is read or generated), the dataset with its texts files, what
    validates the model (:func:`validation.plan_validation`: the dataset's headline
    protocol, its official val split or held-out identities) and what the method
    ``requires`` of the training split. Returns (dataset, training samples, validation)."""
    check_run(cfg)
    dataset = load_dataset(cfg)
    check_run(cfg, dataset.task)
    train, validation = plan_validation(dataset, cfg.data.val_fraction, cfg.seed)
    check_requirements(train, get_method(cfg.method).requires, cfg.method, root=dataset.root)
    return dataset, train, validation


def prepare(cfg: RunConfig) -> Prepared:
    """:func:`prepare_data`, then the backbone and the method built for the training split."""
    from ..backbones import build_backbone

    dataset, train, validation = prepare_data(cfg)
    method_cls = get_method(cfg.method)
    num_cameras = max(s.camid for s in dataset.splits["train"]) + 1
    spec = DataSpec(num_classes=len({s.pid for s in train}), num_cameras=num_cameras,
                    num_clothes=len({s.clothes_id for s in train if s.clothes_id is not None}), task=dataset.task)
    backbone = build_backbone(cfg.backbone.kind, cfg.backbone.preset, cfg.backbone.pretrained,
                              image_size=cfg.data.image_size, num_cameras=num_cameras if cfg.backbone.sie else 0)
    method = method_cls(method_config(cfg), backbone, spec)
    check_eval_texts(method, dataset, validation, cfg.method)
    return Prepared(dataset, train, validation, method, tuple(backbone.image_size))


def check_eval_texts(method: Method, dataset: ReidDataset, validation: Validation, name: str) -> None:
    """Before training: every image split the run evaluates (validation and test, gallery and
    image queries) carries the texts the method reads at test time (``eval_text_kinds``)."""
    kinds = method.eval_text_kinds()
    if not kinds:
        return
    splits: dict[str, list[Sample]] = {}
    if validation.enabled:
        splits["validation gallery"] = validation.gallery
        if validation.protocol != "t2i":
            splits["validation query"] = validation.query
    for ev in dataset.evaluations:
        splits[ev.gallery] = dataset.splits[ev.gallery]
        if ev.protocol != "t2i":
            splits[ev.query] = dataset.splits[ev.query]
    for what, samples in splits.items():
        check_requirements(samples, kinds, name, root=dataset.root, what=f"{what} (evaluated)")


def weights_fingerprint(module: nn.Module) -> str:
    """sha256 (16 hex digits) of a module's state (names, dtypes, shapes, bytes). Tagged on every run
    as the backbone's before training: the tiny CLIP pretrained on first use is bit-identical on one
    machine but not across CPUs, and results move with it, so runs say which weights they started from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def fit(cfg: RunConfig, env: WorkerEnv) -> dict[str, float]:
    """Train ``cfg`` from scratch or from the latest checkpoint in ``env.store``; return final metrics."""
    from ..datasets.loader import build_eval_loader, build_train_loader
    from .distributed import (agree, gathered_state_dict, gathering_on_access, load_gathered_state_dict,
                              partitions_weights)

    cfg = settle_device(cfg, env.device.type == "cuda")
    seed_everything(cfg.seed)
    prep = prepare(cfg)
    method = prep.method.to(env.device)
    validation = prep.validation
    if env.tracker is not None:  # which protocol and split select the model, and which weights it started from
        env.tracker.set_tags({**validation.tags(), INIT_TAG: weights_fingerprint(method.backbone)})
    if env.is_main:
        print(selection_notice(cfg, validation), file=sys.stderr, flush=True)
    config_dict = resolved_dict(cfg)
    stages = method.stages()
    state: dict[str, Any] = {"stage_index": 0, "epoch": 0, "best": {"score": -1.0, "stage": -1, "epoch": -1}}
    resume_dir = env.store.latest() if env.store else None
    if resume_dir is not None:
        ckpt.load_weights(method, resume_dir / ckpt.MODEL_FILE)
        state = ckpt.read_train_state(resume_dir)

    run_dir = env.run_dir if env.run_dir is not None else Path(cfg.output_dir) / cfg.run_name
    best_path = run_dir / "best.safetensors"
    if cfg.data.p % env.world_size:
        raise ValueError(f"data.p={cfg.data.p} identities per batch must divide evenly over {env.world_size} workers")
    # The global batch stays P x K whatever the worker count: each rank takes P / world identities.
    text_kinds = required_text_kinds(method.requires)
    train_loader = build_train_loader(prep.train, prep.image_size, cfg.data.p // env.world_size, cfg.data.k, cfg.seed,
                                      rank=env.rank, world_size=env.world_size, with_masks=method.reads_label_maps(),
                                      num_workers=loader_workers(cfg.data.num_workers, env.device, env.world_size),
                                      text_kinds=text_kinds, crop_p=cfg.data.crop_p, **pixel_statistics(cfg, method))
    final_metrics: dict[str, float] = {}

    def clean_batches() -> Iterable[dict]:
        for batch in build_eval_loader(prep.train, prep.image_size, cfg.data.eval_batch_size,
                                       with_masks=method.reads_label_maps(), text_kinds=text_kinds,
                                       **eval_pixels(cfg, method)):
            yield to_device(batch, env.device)

    engine = None
    for stage_index in range(state["stage_index"], len(stages)):
        stage = scale_schedule(stages[stage_index], cfg.optim.epochs_scale)
        epochs = stage.epochs
        start_epoch = state["epoch"] if stage_index == state["stage_index"] else 0
        resuming_here = resume_dir is not None and stage_index == state["stage_index"]
        if start_epoch >= epochs:
            # Resumed right after this stage ended: the next stage starts from the RNG state saved then.
            if resuming_here:
                ckpt.set_rng_state(state["rng"])
            continue
        set_trainable(method, stage)
        with gathering_on_access(engine):  # the previous stage's ZeRO-3 partitions, if any
            method.begin_stage(stage, clean_batches)
        if engine is not None:  # the previous stage's hooks (ZeRO-3's gathers among them) would fire too
            engine.destroy()
        step_module, optimizer, engine = wrap_for_training(method, stage, cfg, env)
        if resuming_here:
            if engine is not None:
                from .distributed import verify_deepspeed_shards

                verify_deepspeed_shards(resume_dir / DEEPSPEED_DIR, env.checkpoint_key)  # before it unpickles
                engine.load_checkpoint(str(resume_dir / DEEPSPEED_DIR), load_module_strict=False)
            else:
                optimizer.load_state_dict(state["optimizer"])
            ckpt.set_rng_state(state["rng"])
        weights = dict(stage.loss_weights)
        is_last = stage_index == len(stages) - 1
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            lr = set_lr(optimizer, lr_factor(stage, epoch, epochs))
            # A run stopped mid-epoch (a signal) resumes at the next batch with the loss sums so far.
            carried = state.get("partial") if resuming_here and epoch == start_epoch else None
            start_batch = int(carried["batch"]) if carried else 0
            train_loader.set_epoch(epoch, start_batch)
            sums = run_epoch(step_module, engine, optimizer, train_loader, stage, weights, cfg, env,
                             start_batch=start_batch, carried=carried)
            if isinstance(sums, _Stopped):
                _save_interrupted(env, state, stage_index, epoch, sums, optimizer, engine, method, config_dict)
            metrics = {f"train/{k}": v for k, v in sums.items()}
            metrics.update({"lr": lr, "epoch_seconds": time.perf_counter() - t0})
            # ZeRO-3: every rank evaluates, since each forward gathers weights collectively; rank 0's
            # scores decide.
            sharded = partitions_weights(engine)
            if is_last and validation.enabled and (env.is_main or sharded):
                t_val = time.perf_counter()
                with gathering_on_access(engine):
                    val = evaluate_retrieval(method, validation.query, validation.gallery, validation.protocol, cfg,
                                             prep.image_size, env.device).summary()
                metrics.update({f"val/{k}": v for k, v in val.items()})
                metrics["val_seconds"] = time.perf_counter() - t_val
                candidate = agree({"score": val[SELECTION_METRIC], "stage": stage_index, "epoch": epoch}, engine)
                if candidate["score"] > state["best"]["score"]:
                    state["best"] = candidate
                    best = gathered_state_dict(engine, method) if sharded else method
                    if env.is_main:
                        best_path.parent.mkdir(parents=True, exist_ok=True)
                        ckpt.save_weights(best, best_path)
            step = stage_step_offset(stages, cfg, stage_index) + epoch
            if env.tracker is not None:
                env.tracker.log_metrics(metrics, step=step)
            state.update(stage_index=stage_index, epoch=epoch + 1, rng=ckpt.rng_state(), partial=None)
            if engine is None:
                state["optimizer"] = optimizer.state_dict()

            def write(folder: Path) -> None:  # called on every rank
                weights = gathered_state_dict(engine, method) if partitions_weights(engine) else method
                if env.is_main:
                    ckpt.write_checkpoint(folder, weights, state, config_dict)
                if engine is not None:  # every rank saves its ZeRO shard, and signs it
                    engine.save_checkpoint(str(folder / DEEPSPEED_DIR))
                    if env.checkpoint_key is not None:
                        from .distributed import sign_deepspeed_shards

                        sign_deepspeed_shards(folder / DEEPSPEED_DIR, env.rank, env.checkpoint_key)

            if env.store is not None:
                env.store.save(write, metrics)
            if env.on_epoch is not None:
                env.on_epoch(metrics)
            final_metrics = metrics
        state.pop("optimizer", None)

    sharded = partitions_weights(engine)
    if sharded or env.is_main:
        # The best weights are on rank 0's disk; under ZeRO-3 rank 0 scatters them into the partitions.
        if agree(best_path.exists() and state["best"]["epoch"] >= 0, engine):
            if sharded:
                load_gathered_state_dict(engine, method, ckpt.read_weights(best_path) if env.is_main else None)
            else:
                ckpt.load_weights(method, best_path)
        t_test = time.perf_counter()
        with gathering_on_access(engine):
            results = evaluate_test(method, prep, cfg, env.device)
    if env.is_main:
        final_metrics = {**final_metrics, **summarize_results(results), "test_seconds": time.perf_counter() - t_test,
                         **robustness_results(prep, results, cfg.evaluation.visibility_bins)}
        # The last stage's epoch (0-based) whose weights were tested; -1: no validation, the last epoch's.
        final_metrics["best_epoch"] = float(state["best"]["epoch"])
        if env.tracker is not None:
            logged = {k: v for k, v in final_metrics.items() if k.startswith("test/")}
            if state["best"]["epoch"] >= 0:  # MLflow shows which epoch validation picked
                logged["best_epoch"] = final_metrics["best_epoch"]
            env.tracker.log_metrics(logged, step=stage_step_offset(stages, cfg, len(stages)))
            from .plots import cmc_figure

            env.tracker.log_figure(cmc_figure({name: r.cmc for name, r in results.items()}, title=cfg.run_name),
                                   "cmc.png")
    return final_metrics


@dataclass
class _Stopped:
    """``run_epoch`` stopped on request after ``batch`` batches of the epoch (sums so far)."""

    batch: int
    totals: dict[str, float]
    n: int


def _save_interrupted(env: WorkerEnv, state: dict, stage_index: int, epoch: int, stopped: _Stopped, optimizer,
                      engine, method: Method, config_dict: dict) -> None:
    """Checkpoint the middle of an epoch (model, optimizer, RNG, sampler position, the epoch's
    loss sums so far) and raise :class:`TrainingInterrupted`. Resuming replays nothing: the
    sampler starts at ``batch`` and the epoch's logged means come out as if never stopped."""
    state.update(stage_index=stage_index, epoch=epoch, rng=ckpt.rng_state(),
                 partial={"batch": stopped.batch, "totals": dict(stopped.totals), "n": stopped.n})
    if engine is None:
        state["optimizer"] = optimizer.state_dict()
    where = f"stage {stage_index} epoch {epoch} after batch {stopped.batch}"
    written = None
    if env.store is not None:
        def write(folder: Path) -> None:
            nonlocal written
            ckpt.write_checkpoint(folder, method, state, config_dict)
            written = folder

        env.store.save(write, {})
    raise TrainingInterrupted(where, written)


def stage_step_offset(stages: list[Stage], cfg: RunConfig, stage_index: int) -> int:
    """Global epoch number at the start of a stage (MLflow step axis)."""
    return sum(stage_epochs(s, cfg) for s in stages[:stage_index])


def evaluate_test(method: Method, prep: Prepared, cfg: RunConfig, device: torch.device) -> dict[str, Any]:
    """Every evaluation the dataset defines -> its RankResult (evaluated once, at the end)."""
    return {ev.name: evaluate_retrieval(method, prep.dataset.splits[ev.query], prep.dataset.splits[ev.gallery],
                                        ev.protocol, cfg, prep.image_size, device, test_time=True)
            for ev in prep.dataset.evaluations}


def robustness_results(prep: Prepared, results: dict[str, Any], bins: int) -> dict[str, float]:
    """Test metrics over query subsets binned by visible body fraction
    (``test/<evaluation>/visibility/bin<i>/...``, :func:`evaluate.visibility_curve`) for every
    image evaluation whose benchmark records the fraction (the synthetic ones) and whose
    queries differ in it (``synthetic_cc``'s are all unoccluded); none otherwise."""
    from .evaluate import sample_visibility, visibility_curve, visibility_metrics

    out: dict[str, float] = {}
    for ev in prep.dataset.evaluations if bins > 0 else ():
        if ev.protocol == "t2i" or ev.name not in results:
            continue
        visible = sample_visibility(prep.dataset.splits[ev.query], prep.dataset.root)
        if visible is not None and visible.min() < visible.max():  # no curve where every query is as visible
            out.update(visibility_metrics(ev.name, visibility_curve(results[ev.name], visible, bins)))
    return out


def summarize_results(results: dict[str, Any]) -> dict[str, float]:
    """``test/<evaluation>/{R1,R5,R10,mAP,mINP}`` in percent."""
    return {f"test/{name}/{k}": v for name, r in results.items() for k, v in r.summary().items()}


def wrap_for_training(method: Method, stage: Stage, cfg: RunConfig, env: WorkerEnv):
    """Return (callable step module, optimizer, deepspeed engine or None). The plain
    optimizer, DDP's and DeepSpeed's all hold ``optim.param_groups(method, stage)``."""
    if env.world_size > 1 and cfg.dist.strategy == "deepspeed":
        from .distributed import deepspeed_engine

        if cfg.optim.compile != "eager":
            raise ValueError(f"optim.compile={cfg.optim.compile} is not applied under dist.strategy=deepspeed; "
                             "set optim.compile=eager or use dist.strategy=ddp")

        engine = deepspeed_engine(_StepModule(method), param_groups(method, stage), stage, cfg)
        return engine, engine.optimizer, engine
    optimizer = build_optimizer(method, stage)
    module: nn.Module = _StepModule(method)
    if env.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        module = DistributedDataParallel(module, find_unused_parameters=True,
                                         device_ids=[env.device.index] if env.device.type == "cuda" else None)
    if cfg.optim.compile != "eager":
        module = torch.compile(module, mode=None if cfg.optim.compile == "default" else cfg.optim.compile)
    return module, optimizer, None


def run_epoch(module, engine, optimizer, loader, stage: Stage, weights: dict[str, float], cfg: RunConfig,
              env: WorkerEnv, start_batch: int = 0, carried: dict | None = None) -> dict[str, float] | _Stopped:
    """One pass over the sampler; returns the epoch mean of every loss term (averaged over ranks).
    ``start_batch`` / ``carried``: continue an epoch stopped mid-way (its sums so far). When
    ``env.stop()`` turns true the pass ends after that optimizer step (at a gradient
    accumulation boundary) and returns :class:`_Stopped`."""
    module.train()
    accum = cfg.optim.grad_accum
    totals: dict[str, float] = dict(carried["totals"]) if carried else {}
    n = int(carried["n"]) if carried else 0
    batches = loader
    if env.progress and env.is_main:
        from tqdm import tqdm

        batches = tqdm(loader, desc=f"{stage.name}", leave=False)
    limit = stage.batches_per_epoch
    for i, batch in enumerate(batches, start=start_batch):
        if limit is not None and i >= limit:
            break
        batch = to_device(batch, env.device)
        with torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=cfg.optim.amp):
            terms = dict(module(batch, stage))
        logged = {name: float(value) for name, value in terms.pop(LOGGED, {}).items()}
        loss = sum(weights.get(name, 1.0) * value for name, value in terms.items())
        if engine is not None:
            engine.backward(loss)
            engine.step()
        else:
            (loss / accum).backward()
            if (i + 1) % accum == 0:
                if cfg.optim.grad_clip:
                    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                                   cfg.optim.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        for name, value in [*((k, float(v.detach())) for k, v in terms.items()), *logged.items()]:
            totals[name] = totals.get(name, 0.0) + value
        totals["loss"] = totals.get("loss", 0.0) + float(loss.detach())
        n += 1
        if env.stop is not None and (i + 1) % accum == 0 and env.stop():
            return _Stopped(i + 1, totals, n)
    means = {k: v / max(n, 1) for k, v in totals.items()}
    if env.world_size > 1:
        import torch.distributed as dist

        keys = sorted(means)
        t = torch.tensor([means[k] for k in keys], dtype=torch.float64, device=env.device)
        dist.all_reduce(t)
        means = {k: float(v) / env.world_size for k, v in zip(keys, t)}
    return means
