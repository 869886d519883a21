"""``reidbench eval --checkpoint PATH [--dataset NAME --root DIR]``."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from ..config import ConfigError
from ..datasets import build_dataset
from . import checkpoint as ckpt
from .commands import print_metrics, run_config_from_args
from .run_config import build_run_config
from .trainer import check_run, evaluate_test, local_device, prepare, summarize_results


def locate(path: Path) -> tuple[Path, Path]:
    """(weights file, folder holding config.yaml) for a checkpoint folder, a run folder or best.safetensors.

    A run folder's model is ``best.safetensors`` (the epoch validation chose) or, for a run trained
    without validation (``data.val_fraction=0``, the last epoch is the model), its latest checkpoint.
    A run *name* folder (``runs/<method>/<ablation>/<dataset>/<seed>``, holding one run folder per
    config) means its newest run folder, named on stderr.
    """
    if not path.exists():
        raise FileNotFoundError(f"--checkpoint {path} does not exist")
    if path.is_dir() and not (path / ckpt.MODEL_FILE).exists() and not (path / "best.safetensors").exists() \
            and not (path / "checkpoints").exists():
        from .api import _all_run_folders

        runs = _all_run_folders(path)
        if runs:
            if len(runs) > 1:
                print(f"reidbench eval: {path} holds {len(runs)} run folders; evaluating the newest, {runs[0]}",
                      file=sys.stderr)
            path = runs[0]
    if path.is_file():
        config_dir = path.parent / "checkpoints" / "latest"
        return path, config_dir if (config_dir / ckpt.CONFIG_FILE).exists() else path.parent
    if (path / ckpt.MODEL_FILE).exists():
        return path / ckpt.MODEL_FILE, path
    try:  # the newest complete one of latest / latest.tmp / latest.old (a crash mid-write)
        latest, note = ckpt.find_resumable(path / "checkpoints" / "latest")
    except ckpt.CheckpointError:
        latest, note = None, ""
    if note:
        print(f"reidbench eval: {note.replace('resuming from', 'using')}", file=sys.stderr)
    latest = latest if latest is not None else path / "checkpoints" / "latest"
    if (path / "best.safetensors").exists():
        return path / "best.safetensors", latest
    if (latest / ckpt.MODEL_FILE).exists() and (latest / ckpt.CONFIG_FILE).exists():
        if float(ckpt.read_config(latest)["data"]["val_fraction"]) == 0.0:
            return latest / ckpt.MODEL_FILE, latest
        raise FileNotFoundError(f"{path}: the run selects its model on validation but has no best.safetensors "
                                f"(did it finish an epoch?); pass {latest} to evaluate its latest weights")
    raise FileNotFoundError(f"{path}: expected a checkpoint folder (with {ckpt.MODEL_FILE}), a run folder "
                            "(with best.safetensors, or checkpoints/latest when trained without validation) "
                            "or a .safetensors file")


def load_trained_run(path: str | Path):
    """(run config, ``prepare``'s result with the trained weights loaded) for a run folder, run
    name folder or checkpoint (:func:`locate`'s choice of weights): what the analysis scripts start from."""
    weights, config_dir = locate(Path(path))
    cfg = build_run_config(base=ckpt.read_config(config_dir))
    prep = prepare(cfg)
    ckpt.load_weights(prep.method, weights)
    return cfg, prep


def evaluate_untrained(args: argparse.Namespace) -> int:
    """The method's model exactly as ``prepare`` builds it (the backbone's weights, fresh heads), never
    trained: the "untrained CLIP" row a trained method has to beat. Nothing is logged."""
    try:
        if not args.method:
            raise ValueError("--untrained needs --method (the model to build)")
        cfg = run_config_from_args(args)
        prep = prepare(cfg)
    except (ConfigError, KeyError, FileNotFoundError, ValueError) as exc:
        print(f"reidbench eval: {exc}", file=sys.stderr)
        return 2
    return _score(prep, cfg, f"untrained, backbone.pretrained={cfg.backbone.pretrained}")


def evaluate_checkpoint(args: argparse.Namespace) -> int:
    if args.untrained:
        return evaluate_untrained(args)
    model_overrides = [o for o in args.overrides if not o.startswith("evaluation.")]
    ignored = [flag for flag, value in (("--method", args.method), ("--preset", args.preset), ("--seed", args.seed),
                                        ("--config", args.config), (" ".join(model_overrides), model_overrides))
               if value]
    try:
        if ignored:
            raise ValueError(f"{', '.join(ignored)} cannot change a checkpoint's config (it is read from the "
                             "checkpoint); --dataset, --root and evaluation.* overrides choose how to evaluate")
        weights, config_dir = locate(Path(args.checkpoint))
        if not (config_dir / ckpt.CONFIG_FILE).exists():
            raise FileNotFoundError(f"no {ckpt.CONFIG_FILE} beside {weights} (looked in {config_dir})")
        cfg = build_run_config(overrides=args.overrides, base=ckpt.read_config(config_dir))
        target = cfg
        if args.dataset or args.root:
            target = replace(cfg, data=replace(cfg.data, dataset=args.dataset or cfg.data.dataset,
                                               root=args.root if args.root else cfg.data.root))
            check_run(target)  # the requested dataset's task, before the model is built
        # The model is rebuilt as trained (its classifier sizes come from the training set),
        # then evaluated on the requested dataset's test protocols.
        prep = prepare(cfg)
    except (ConfigError, KeyError, FileNotFoundError, ValueError) as exc:
        print(f"reidbench eval: {exc}", file=sys.stderr)
        return 2
    ckpt.load_weights(prep.method, weights)
    if target is not cfg:
        prep = replace(prep, dataset=build_dataset(target.data.dataset, target.data.root))
    return _score(prep, target, str(weights))


def _score(prep, cfg, what: str) -> int:
    """Evaluate ``prep.method`` on every test protocol of ``prep.dataset`` and print the metrics."""
    from ..datasets.check import check_images

    # Every image the protocols read, checked in one pass before any is embedded.
    check_images({split: prep.dataset.splits[split] for ev in prep.dataset.evaluations
                  for split in (ev.gallery, ev.query)}, root=prep.dataset.root)
    device = local_device(None)  # CUDA where there is one, whatever the checkpoint trained on
    metrics = summarize_results(evaluate_test(prep.method.to(device), prep, cfg, device))
    print_metrics(f"{cfg.run_name} [{what}] on {cfg.data.dataset}", metrics)
    return 0
