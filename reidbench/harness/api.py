"""``train_run``: one (method, ablation, dataset, seed) run, from config to MLflow.

This is what ``reidbench train``, the demo and the sweeps call. It opens (or, on
resume, continues) the MLflow run, runs the loop in-process or on a Ray Train
worker group, and always closes the run: FINISHED, FAILED, or KILLED (a signal).

Runs are the user's data: nothing here deletes a run folder or an MLflow run.

* Every input is checked before anything is written: the config, the dataset and its
  texts, every image the run will read (one quick pass listing all bad files), the
  output folder and the tracking store.
* A run folder is ``<output_dir>/<method>/<ablation>/<dataset>/<seed>/<config hash>``:
  the hash covers the whole resolved config except what may change on resume
  (:data:`RESUME_FREE_KEYS`) and ``output_dir``, so runs that differ in anything else
  (a ``params.*``, the lr, ``--workers``) coexist. A fresh run of the same resolved
  config gets the next folder (``<hash>-2``, ``<hash>-3``, ...) and a new MLflow run; the
  earlier MLflow runs of that config are tagged ``superseded`` (with the id of the run
  that supersedes them) and kept, folders and all. ``--resume`` continues the newest
  folder of the config.
* One process at a time per configuration: ``<hash>.lock`` beside the folders is held
  (``flock``) for the whole run; a second process gets "in use by PID N".
* SIGTERM / SIGINT end an in-process run after the current optimizer step, with a
  mid-epoch checkpoint, as KILLED; ``--resume`` continues it exactly. (A Ray worker group
  is stopped at once, as KILLED; it resumes from its last epoch checkpoint.)
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import secrets
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from ..config import ConfigError, diff_keys, flatten
from . import checkpoint as ckpt
from .distributed import LocalStore, launch_ray, latest_ray_checkpoint, ray_run_name
from .run_config import RunConfig, resolved_dict
from .tracking import MlflowTracker, close_run, open_run
from .trainer import TrainingInterrupted, WorkerEnv, fit, local_device, prepare_data, settle_device

# Keys that may change between a run and its resumption without changing its result.
RESUME_FREE_KEYS = ("data.num_workers", "data.eval_batch_size", "tracking.tracking_uri", "dist.use_gpu",
                    "optim.compile")
# ... and which therefore do not make a run folder of their own (nor does where runs are kept).
HASH_FREE_KEYS = (*RESUME_FREE_KEYS, "output_dir")
RUN_FILE = "run.json"  # in a run folder: its MLflow run id and store, config hash, creation time
KEY_FILE = "run.key"  # in a run folder: the secret that signs its DeepSpeed shards (never inside a checkpoint)


class RunInUse(ValueError):
    """Another process holds the configuration's lock."""


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


# ----------------------------------------------------------------------------- run folders

def config_hash(resolved: dict) -> str:
    """10 hex digits of the resolved config, without :data:`HASH_FREE_KEYS`."""
    flat = {k: v for k, v in flatten(resolved).items() if k not in HASH_FREE_KEYS}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:10]


def name_folder(cfg: RunConfig) -> Path:
    """``<output_dir>/<method>/<ablation>/<dataset>/<seed>``, refused if it would leave ``output_dir``."""
    out = Path(cfg.output_dir).expanduser().absolute()
    folder = out / cfg.run_name
    if os.path.commonpath([os.path.realpath(out), os.path.realpath(folder)]) != os.path.realpath(out):
        raise ConfigError(f"run name {cfg.run_name!r} would put the run folder outside --output-dir {out}")
    return folder


def attempt_folders(names: Path, chash: str) -> list[Path]:
    """The folders of one config under a name folder, oldest first (``<hash>``, ``<hash>-2``, ...)."""
    if not names.is_dir():
        return []
    found = []
    for entry in names.iterdir():
        head, _, count = entry.name.partition("-")
        if head == chash and entry.is_dir() and (not count or count.isdigit()):
            found.append((int(count or 1), entry))
    return [p for _, p in sorted(found)]


def _all_run_folders(names: Path) -> list[Path]:
    """Every run folder under a name folder (any config), newest first by creation time."""
    if not names.is_dir():
        return []
    folders = [p for p in names.iterdir() if p.is_dir() and (p / RUN_FILE).is_file()]
    return sorted(folders, key=lambda p: _created(p), reverse=True)


def _created(folder: Path) -> float:
    try:
        return float(json.loads((folder / RUN_FILE).read_text()).get("created", 0.0))
    except (OSError, ValueError, AttributeError):
        return folder.stat().st_mtime


def _hash_of(folder: Path) -> str:
    return folder.name.partition("-")[0]


@contextmanager
def run_lock(names: Path, chash: str):
    """Hold ``<names>/<hash>.lock`` (flock, released when the process ends however it ends);
    :class:`RunInUse` naming the holder's PID when another process has it."""
    names.mkdir(parents=True, exist_ok=True)
    path = names / f"{chash}.lock"
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RunInUse(f"run folder {names / chash}* is in use by PID {holder} (lock {path}): another process "
                           "is training this configuration; wait for it, or stop it first (its checkpoint is "
                           "kept; --resume continues it)") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()


def checkpoint_folder(cfg: RunConfig, run_dir: Path | None = None) -> Path:
    return (run_dir if run_dir is not None else current_run_dir(cfg)) / "checkpoints"


def current_run_dir(cfg: RunConfig) -> Path:
    """The newest run folder of ``cfg``'s resolved config (where ``--resume`` continues); else
    the newest run folder of its name (where ``--resume --force`` continues); else the one a
    first run would create."""
    cfg = resolve_device(cfg)
    chash = config_hash(resolved_dict(cfg))
    folders = attempt_folders(name_folder(cfg), chash)
    if folders:
        return folders[-1]
    # None of this config: the newest run folder of the name (what --resume --force continues).
    others = _all_run_folders(name_folder(cfg))
    return others[0] if others else name_folder(cfg) / chash


def latest_checkpoint(cfg: RunConfig, run_dir: Path | None = None) -> Path | None:
    run_dir = run_dir if run_dir is not None else current_run_dir(cfg)
    if uses_ray(cfg):
        found = latest_ray_checkpoint(str((run_dir / "ray").resolve()), ray_run_name(cfg))
        return Path(found.path) if found is not None else None
    return LocalStore(checkpoint_folder(cfg, run_dir)).latest()


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


# ----------------------------------------------------------------------------- checks before writing

def check_writable(cfg: RunConfig, uri: str) -> None:
    """The output folder and a local tracking store must be creatable and writable."""
    targets = [("--output-dir", Path(cfg.output_dir).expanduser().absolute(), True)]
    if uri.startswith("sqlite:///"):
        targets.append(("the MLflow store (--tracking-uri)", Path(uri[len("sqlite:///"):]), False))
    elif uri.startswith("file:"):
        targets.append(("the MLflow store (--tracking-uri)", Path(uri[len("file:"):].lstrip("/")).absolute(), True))
    for what, path, is_dir in targets:
        probe = path
        while not probe.exists():
            if probe.parent == probe:
                break
            probe = probe.parent
        if probe != path and not probe.is_dir():
            raise ValueError(f"{what}: cannot create {path}: {probe} is a file, not a folder")
        if probe == path and is_dir and not path.is_dir():
            raise ValueError(f"{what}: {path} is a file; expected a folder")
        target = probe if probe != path or is_dir else path
        if not os.access(target, os.W_OK | (os.X_OK if target.is_dir() else 0)):
            raise ValueError(f"{what}: {target} is not writable by this user; expected a folder you can write "
                             f"(runs, checkpoints and the MLflow store go there)")


def check_run_images(cfg: RunConfig, dataset, train, validation) -> None:
    """Every image of every split the run reads (training, validation, each test protocol's
    query and gallery), in one quick pass that lists all bad files before training."""
    from ..datasets.check import check_images

    splits = {"train": train, "validation query": validation.query, "validation gallery": validation.gallery}
    for ev in dataset.evaluations:
        for split in (ev.gallery, ev.query):
            splits.setdefault(split, dataset.splits[split])
    check_images(splits, root=dataset.root)


# ----------------------------------------------------------------------------- signals

@contextmanager
def stop_on_signals(immediate: bool):
    """SIGTERM and SIGINT while training. ``immediate`` (a Ray worker group): the first one
    raises KeyboardInterrupt. Otherwise the first one only asks the loop to stop after its
    current step (``stop()`` turns true), a second one raises KeyboardInterrupt. Yields
    ``(stop, received)``; a no-op outside the main thread (Tune trials), where Python
    cannot install handlers."""
    received: list[int] = []

    def stop() -> bool:
        return bool(received)

    if threading.current_thread() is not threading.main_thread():
        yield stop, received
        return

    def handler(signum, frame):
        received.append(signum)
        if immediate or len(received) > 1:
            raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")
        print(f"reidbench: {signal.Signals(signum).name} received: stopping after this step with a checkpoint "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop, received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ----------------------------------------------------------------------------- the run

def train_run(cfg: RunConfig, resume: bool = False, force: bool = False, progress: bool = False,
              on_epoch: Callable[[dict[str, float]], None] | None = None, in_tune: bool = False) -> dict:
    """Train and evaluate one run; return its final metrics (``test/<protocol>/<metric>`` among
    them), ``run_id`` and ``run_dir``. ``on_epoch`` sees each epoch's metrics (in-process
    runs); inside a Tune trial (``in_tune``) a worker group reports to Tune through
    ``TuneReportCallback``. Raises :class:`trainer.TrainingInterrupted` (its ``signum`` set)
    when a signal stopped training."""
    from .tracking import tracking_uri

    # Every check before anything is written: a bad input leaves no folder and no MLflow run.
    names = name_folder(cfg)
    dataset, train, validation = prepare_data(cfg)
    check_run_images(cfg, dataset, train, validation)
    cfg = resolve_device(cfg)
    resolved = resolved_dict(cfg)
    chash = config_hash(resolved)
    uri = tracking_uri(cfg)
    check_writable(cfg, uri)

    folders = attempt_folders(names, chash)
    run_dir: Path | None = None
    if resume:
        if folders:
            run_dir = folders[-1]
        else:
            others = [f for f in _all_run_folders(names) if _hash_of(f) != chash]
            others = [f for f in others if (f / "checkpoints").exists() or (f / "ray").exists()]
            if others and not force:
                saved = ckpt.find_resumable(others[0] / "checkpoints" / "latest")[0]
                if saved is not None:
                    check_resume(cfg, resolved, saved, force)  # raises, naming the keys that differ
            elif others:
                run_dir = others[0]
    lock_hash = _hash_of(run_dir) if run_dir is not None else chash
    with run_lock(names, lock_hash):
        existing = None
        if run_dir is not None:
            existing = latest_checkpoint(cfg, run_dir)  # CheckpointError when only incomplete ones exist
            store_note = LocalStore(checkpoint_folder(cfg, run_dir)).note if not uses_ray(cfg) else ""
            if existing is not None:
                check_resume(cfg, resolved, existing, force)
                print(f"reidbench: resuming {run_dir} from {existing}" + (f" ({store_note})" if store_note else ""),
                      file=sys.stderr)
        else:
            folders = attempt_folders(names, chash)  # again, under the lock
            run_dir = names / (chash if not folders else f"{chash}-{_attempt_number(folders[-1]) + 1}")
        run_dir.mkdir(parents=True, exist_ok=True)
        previous_id = _read_run_file(run_dir).get("run_id") if resume else None
        uri, run_id = open_run(cfg, resolved, resume_run_id=previous_id, config_hash=chash, run_dir=run_dir)
        key = _run_key(run_dir)
        _write_run_file(run_dir, {"run_id": run_id, "tracking_uri": uri, "experiment": cfg.tracking.experiment,
                                  "run_name": cfg.run_name, "config_hash": chash,
                                  "created": _read_run_file(run_dir).get("created", time.time())})
        status = "FAILED"
        try:
            with stop_on_signals(immediate=uses_ray(cfg)) as (stop, received):
                try:
                    if uses_ray(cfg):
                        metrics = launch_ray(cfg, resolved, uri, run_id, in_tune=in_tune, run_dir=run_dir,
                                             checkpoint_key=key)
                    else:
                        env = WorkerEnv(device=local_device(cfg.dist.use_gpu),
                                        store=LocalStore(checkpoint_folder(cfg, run_dir)),
                                        tracker=MlflowTracker(uri, run_id), progress=progress, on_epoch=on_epoch,
                                        run_dir=run_dir, checkpoint_key=key, stop=stop)
                        metrics = fit(cfg, env)
                except TrainingInterrupted as exc:
                    exc.signum = received[0] if received else signal.SIGTERM
                    raise
            status = "FINISHED"
        except (KeyboardInterrupt, TrainingInterrupted):
            status = "KILLED"
            raise
        except SystemExit as exc:  # a clean exit asked from outside (Ray Tune stopping a trial: sys.exit(0))
            status = "KILLED" if exc.code in (None, 0) else "FAILED"
            raise
        finally:
            close_run(uri, run_id, status)
    metrics["run_id"] = run_id
    metrics["run_dir"] = str(run_dir)
    return metrics


def _attempt_number(folder: Path) -> int:
    count = folder.name.partition("-")[2]
    return int(count) if count.isdigit() else 1


def _read_run_file(run_dir: Path) -> dict:
    try:
        data = json.loads((run_dir / RUN_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_run_file(run_dir: Path, data: dict) -> None:
    tmp = run_dir / (RUN_FILE + ".partial")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, run_dir / RUN_FILE)


def _run_key(run_dir: Path) -> bytes:
    """The run's secret for signing DeepSpeed shards, created once (mode 0600)."""
    path = run_dir / KEY_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())
