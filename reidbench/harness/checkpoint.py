"""Checkpoints: weights in safetensors, training state loaded with ``weights_only=True``.

A checkpoint is a folder: ``model.safetensors`` (the method's state dict),
``train_state.pt`` (optimizer, scheduler, sampler and RNG state, stage, epoch,
best validation score; only tensors and plain containers, so it loads without
unpickling arbitrary objects) and ``config.yaml`` (the resolved run config).
"""

from __future__ import annotations

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


def save_weights(weights: nn.Module | dict[str, torch.Tensor], path: str | Path) -> None:
    """A module's state dict, or an already gathered one (ZeRO-3), as safetensors."""
    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    # clone() breaks storage sharing (tied weights), which safetensors refuses.
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in state.items()}, str(path))


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def load_weights(module: nn.Module, path: str | Path) -> None:
    state = read_weights(path)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


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
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_weights(weights, tmp / MODEL_FILE)
    torch.save(train_state, tmp / STATE_FILE)
    (tmp / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=True))
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old)
    else:
        os.replace(tmp, folder)
    return folder


def read_train_state(folder: str | Path) -> dict:
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


def read_config(folder: str | Path) -> dict:
    return yaml.safe_load((Path(folder) / CONFIG_FILE).read_text())


def _to_plain(x: Any) -> Any:
    return [_to_plain(v) for v in x] if isinstance(x, tuple) else x


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, list) else x
