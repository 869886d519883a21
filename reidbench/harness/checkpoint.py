"""Checkpoints: weights in safetensors, training state loaded with ``weights_only=True``.

A checkpoint is a folder: ``model.safetensors`` (the method's state dict),
``train_state.pt`` (optimizer, scheduler, sampler and RNG state, stage, epoch,
best validation score; only tensors and plain containers, so it loads without
unpickling arbitrary objects), ``config.yaml`` (the resolved run config) and
``manifest.json`` (the SHA-256 of each of those files), written last: a folder whose
manifest is missing or does not match its files is incomplete (a crash mid-write, a
truncated copy) and is never resumed from.

Writes are atomic: the new checkpoint is built in ``latest.tmp``; the previous one is
moved to ``latest.old`` while ``latest.tmp`` takes its place. A crash at any moment
leaves at least one complete folder among ``latest``, ``latest.tmp`` and ``latest.old``;
:func:`find_resumable` takes the newest complete one and says which.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, does not match the model, or cannot be trusted."""


def save_weights(weights: nn.Module | dict[str, torch.Tensor], path: str | Path) -> None:
    """A module's state dict, or an already gathered one (ZeRO-3), as safetensors."""
    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    # clone() breaks storage sharing (tied weights), which safetensors refuses.
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in state.items()}, str(path))


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a missing, truncated or foreign file is a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint weights {path} do not exist")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError (and OSError) on a bad file
        raise CheckpointError(f"checkpoint weights {path} cannot be read ({type(exc).__name__}: {exc}); expected "
                              "a complete safetensors file written by reidbench (truncated or copied "
                              "incompletely?)") from None


def load_weights(module: nn.Module, path: str | Path) -> None:
    state = read_weights(path)
    missing, unexpected = module.load_state_dict(state, strict=False) if _shapes_match(module, state, path) else ([], [])
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not match the model: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]} (was it written by another method or backbone preset?)")


def _shapes_match(module: nn.Module, state: dict[str, torch.Tensor], path) -> bool:
    own = module.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise CheckpointError(f"checkpoint {path} does not match the model: {len(wrong)} tensor(s) of another shape "
                              f"(checkpoint vs model: {', '.join(wrong[:3])}); was it trained with another preset, "
                              "image size or dataset?")
    return True


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": _to_plain(random.getstate()),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(_to_tuple(state["python"]))


def write_checkpoint(folder: str | Path, weights: nn.Module | dict[str, torch.Tensor], train_state: dict,
                     config: dict) -> Path:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact. ``weights``
    is the module or its full state dict (gathered from ZeRO-3 partitions)."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    old = folder.with_name(folder.name + ".old")
    if tmp.exists():
        # Only a *complete* tmp can be newer than everything else (a crash between the two
        # renames below); keep it as the fallback by moving it where ``old`` goes.
        if is_complete(tmp) and not is_complete(folder):
            if old.exists():
                shutil.rmtree(old)
            os.replace(tmp, old)
        else:
            shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_weights(weights, tmp / MODEL_FILE)
    torch.save(train_state, tmp / STATE_FILE)
    (tmp / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=True))
    write_manifest(tmp, [MODEL_FILE, STATE_FILE, CONFIG_FILE])
    if folder.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old)
    else:
        os.replace(tmp, folder)
    _fsync_dir(folder.parent)
    return folder


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_manifest(folder: str | Path, files: list[str], key: bytes | None = None,
                   name: str = MANIFEST_FILE) -> Path:
    """``name`` in ``folder``: each file's size and SHA-256, and with ``key`` an HMAC over
    them, written (and fsynced) after the files themselves, so its presence means they
    are complete."""
    folder = Path(folder)
    entries = {}
    for rel in sorted(files):
        path = folder / rel
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
        entries[rel] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    manifest: dict[str, Any] = {"format": 1, "files": entries}
    if key is not None:
        manifest["hmac"] = _mac(key, entries)
    out = folder / name
    tmp = out.with_name(out.name + ".partial")
    with open(tmp, "w") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out)
    return out


def _mac(key: bytes, entries: dict) -> str:
    return hmac.new(key, json.dumps(entries, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def manifest_problem(folder: str | Path, name: str = MANIFEST_FILE, key: bytes | None = None) -> str | None:
    """Why ``folder`` fails its manifest (None when every listed file is there with its hash,
    and, given ``key``, the manifest carries a matching HMAC)."""
    folder = Path(folder)
    path = folder / name
    try:
        manifest = json.loads(path.read_text())
        entries = manifest["files"]
    except FileNotFoundError:
        return f"no {name}"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{name} is unreadable ({exc})"
    for rel, entry in entries.items():
        file = folder / rel
        if not file.is_file():
            return f"{rel} is missing"
        if file.stat().st_size != entry.get("size") or _sha256(file) != entry.get("sha256"):
            return f"{rel} does not match its hash in {name} (truncated or modified)"
    if key is not None and not hmac.compare_digest(str(manifest.get("hmac", "")), _mac(key, entries)):
        return f"{name} is not signed by this run's key"
    return None


def is_complete(folder: str | Path) -> bool:
    """A checkpoint folder whose manifest matches its files. One written before manifests
    existed counts when its three files are there and its state loads."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    if (folder / MANIFEST_FILE).exists():
        return manifest_problem(folder) is None
    if not all((folder / f).is_file() for f in (MODEL_FILE, STATE_FILE, CONFIG_FILE)):
        return False
    try:
        read_train_state(folder)
        read_weights(folder / MODEL_FILE)
    except Exception:
        return False
    return True


def find_resumable(latest: str | Path) -> tuple[Path | None, str]:
    """The newest complete checkpoint among ``latest``, ``latest.tmp`` (complete only when a
    crash fell between the two renames of :func:`write_checkpoint`) and ``latest.old``, with
    a note saying which was taken and why. ``(None, "")`` when there is nothing at all; a
    :class:`CheckpointError` when there are checkpoint folders but none is complete (never
    "nothing to resume")."""
    latest = Path(latest)
    candidates = [latest, latest.with_name(latest.name + ".tmp"), latest.with_name(latest.name + ".old")]
    present = [c for c in candidates if c.exists()]
    if not present:
        return None, ""
    for c in candidates:
        if c in present and is_complete(c):
            if c == latest:
                return c, ""
            why = "missing" if not latest.exists() else f"incomplete: {_problem(latest)}"
            return c, f"{latest.name} is {why}; resuming from the last complete checkpoint {c}"
    details = "; ".join(f"{c.name}: {_problem(c)}" for c in present)
    raise CheckpointError(f"no complete checkpoint to resume in {latest.parent} ({details}). Nothing was removed; "
                          "start afresh without --resume (a new run folder is used) or restore the folder")


def _problem(folder: Path) -> str:
    if not folder.exists():
        return "missing"
    if (folder / MANIFEST_FILE).exists():
        return manifest_problem(folder) or "complete"
    lacking = [f for f in (MODEL_FILE, STATE_FILE, CONFIG_FILE) if not (folder / f).is_file()]
    return f"lacks {', '.join(lacking)}" if lacking else "unreadable files"


def read_train_state(folder: str | Path) -> dict:
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


def read_config(folder: str | Path) -> dict:
    """A checkpoint's ``config.yaml`` as a mapping; an empty, unreadable or non-mapping file is a
    :class:`CheckpointError` (never silently the defaults)."""
    path = Path(folder) / CONFIG_FILE
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{path} cannot be read as YAML ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(data, dict) or not data.get("method"):
        raise CheckpointError(f"{path} is {'empty' if not data else 'not a run config'}: expected the resolved run "
                              "config reidbench writes beside the weights (a mapping with method, data, backbone, ...)")
    return data


def _to_plain(x: Any) -> Any:
    return [_to_plain(v) for v in x] if isinstance(x, tuple) else x


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, list) else x
