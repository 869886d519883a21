"""CLI subcommands of the harness: ``train``, ``eval``, ``demo``."""

from __future__ import annotations

import argparse
import sys


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by everything that builds a RunConfig (shortcuts for common keys)."""
    p.add_argument("--method", help="registered method (reidbench.methods.list_methods())")
    p.add_argument("--dataset", help="registered dataset (reidbench.datasets.list_datasets())")
    p.add_argument("--root", help="folder holding the dataset")
    p.add_argument("--preset", choices=["tiny", "paper"])
    p.add_argument("--seed", type=int)
    p.add_argument("--config", action="append", default=[], help="YAML config file (repeatable)")
    p.add_argument("--output-dir", help="runs, checkpoints and the default MLflow store go here")
    p.add_argument("--tracking-uri", help="any MLflow tracking URI (default: sqlite under --output-dir)")
    p.add_argument("--experiment", help="MLflow experiment name")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. params.n_ctx=8")


def run_config_from_args(args: argparse.Namespace, extra: list[str] = ()):
    from .run_config import build_run_config

    # Flags are values, never YAML: "--root '/data/a #1'" is that folder, "--root 2024" a string.
    shortcuts = {"method": args.method, "data.dataset": args.dataset, "data.root": args.root,
                 "preset": args.preset, "seed": args.seed, "output_dir": args.output_dir,
                 "tracking.tracking_uri": args.tracking_uri, "tracking.experiment": args.experiment}
    for key in ("workers", "strategy", "zero_stage"):
        if getattr(args, key, None) is not None:
            shortcuts[f"dist.{key}"] = getattr(args, key)
    for flag, key in (("--root", "data.root"), ("--output-dir", "output_dir")):
        if shortcuts[key] is not None and not str(shortcuts[key]).strip():
            raise ValueError(f"{flag}: expected a folder, got an empty string")
    values = {k: v for k, v in shortcuts.items() if v is not None}
    return build_run_config(args.config, list(extra) + list(args.overrides), values=values)


def _train(args: argparse.Namespace) -> int:
    """Exit codes: 0 done, 2 bad input (nothing written), 128 + signal number when a SIGTERM /
    SIGINT stopped training (a checkpoint was written; ``--resume`` continues)."""
    from .api import train_run
    from .trainer import TrainingInterrupted

    cfg = run_config_from_args(args)
    try:
        metrics = train_run(cfg, resume=args.resume, force=args.force, progress=sys.stderr.isatty())
    except TrainingInterrupted as exc:
        print(f"reidbench train: {exc} (MLflow run marked KILLED)", file=sys.stderr)
        return 128 + getattr(exc, "signum", 15)
    print_metrics(cfg.run_name, metrics)
    return 0


def print_metrics(name: str, metrics: dict) -> None:
    print(f"{name}  (MLflow run {metrics['run_id']})" if "run_id" in metrics else name)
    for key in sorted(k for k in metrics if k.startswith("test/")):
        print(f"  {key:32s} {metrics[key]:7.2f}")


def _eval(args: argparse.Namespace) -> int:
    from .evaluation_command import evaluate_checkpoint

    return evaluate_checkpoint(args)


DEMO_EPOCHS_SCALE = 0.5  # measured on 2 cores: 12 runs in 12.4 min at 0.5, 24.3 min at 1.0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def _leaderboard(args: argparse.Namespace) -> int:
    from .leaderboard import run_leaderboard_command

    return run_leaderboard_command(args)


def _ui(args: argparse.Namespace) -> int:
    from .ui import run_ui

    return run_ui(args)


def add_commands(sub) -> None:
    train = sub.add_parser("train", help="train and evaluate one method on one dataset")
    add_run_arguments(train)
    train.add_argument("--workers", type=int, help="Ray Train workers (1: in-process, no Ray)")
    train.add_argument("--strategy", choices=["ddp", "deepspeed"])
    train.add_argument("--zero-stage", dest="zero_stage", type=int, choices=[1, 2, 3])
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    train.add_argument("--force", action="store_true", help="resume even if the config changed")
    train.set_defaults(func=_train)

    ev = sub.add_parser("eval", help="evaluate a checkpoint (or an untrained model) on a dataset's test protocols")
    which = ev.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="a run folder (its best.safetensors, or its last epoch when trained "
                                            "without validation), a checkpoint folder or a .safetensors file")
    which.add_argument("--untrained", action="store_true",
                       help="evaluate the method's model as built, before any training (the backbone's own features)")
    add_run_arguments(ev)  # --dataset/--root pick the evaluation data; the rest only matter with --untrained
    ev.set_defaults(func=_eval)

    demo = sub.add_parser("demo", help="the embedded default benchmark: synthetic data, tiny CLIP, every method")
    demo.add_argument("--output-dir", default="runs/demo")
    demo.add_argument("--methods", default="*", help="glob over registered methods")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--epochs-scale", type=float, default=DEMO_EPOCHS_SCALE,
                      help="fraction of the tiny preset's epochs each run trains (default %(default)s)")
    demo.add_argument("--all-benchmarks", action="store_true",
                      help="every method on every synthetic benchmark of its task (default: the image methods on "
                           "synthetic_cc, the text methods on synthetic_pedes; the default took 9.7 min on 2 "
                           "cores, this about twice that)")
    demo.set_defaults(func=_demo)

    board = sub.add_parser("leaderboard", help="an experiment's runs as CSV/Markdown tables beside the published numbers")
    board.add_argument("--experiment", required=True, help="MLflow experiment (one per sweep)")
    board.add_argument("--out", required=True, help="folder for leaderboard.csv, leaderboard.md and plots/")
    board.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db")
    board.add_argument("--no-plots", action="store_true", help="skip the sensitivity and CMC plots")
    board.add_argument("--log-to-run", metavar="RUN_ID", help="also log the tables and plots as artifacts of this run")
    board.set_defaults(func=_leaderboard)

    ui = sub.add_parser("ui", help="serve the MLflow UI for the tracking store (127.0.0.1 unless --host)")
    ui.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db")
    ui.add_argument("--host", default="127.0.0.1", help="interface to bind (default: this machine only)")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    ui.set_defaults(func=_ui)
