"""Optimizers and learning-rate schedules of a stage (the trainer's, DDP's and DeepSpeed's alike).

``param_groups`` is the one place where a stage's parameters become optimizer groups
(prefix -> lr multiplier); ``build_optimizer`` turns them into a torch optimizer.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import replace

import torch
from torch import nn

from ..methods import Stage
from .run_config import RunConfig


def lr_factor(stage: Stage, epoch: int, epochs: int) -> float:
    """Learning-rate multiplier for ``epoch`` (0-based): linear warmup from
    ``warmup_factor``, then cosine to 0, step decay at ``milestones``, or constant."""
    if epoch < stage.warmup_epochs:
        alpha = epoch / stage.warmup_epochs
        return stage.warmup_factor * (1 - alpha) + alpha
    if stage.schedule == "cosine":
        t = (epoch - stage.warmup_epochs) / max(1, epochs - stage.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * t))
    if stage.schedule == "steps":
        return stage.gamma ** bisect.bisect_right(stage.milestones, epoch)
    return 1.0


def scale_schedule(stage: Stage, scale: float) -> Stage:
    """``stage`` with its epochs, warmup and step milestones all multiplied by ``scale``
    (``optim.epochs_scale``): a longer or shorter run keeps the schedule's shape.
    Epochs round up (at least 1); warmup and milestones round to the nearest epoch."""
    if scale == 1.0:
        return stage
    return replace(stage, epochs=max(1, math.ceil(stage.epochs * scale)),
                   warmup_epochs=int(round(stage.warmup_epochs * scale)),
                   milestones=tuple(int(round(m * scale)) for m in stage.milestones))


def stage_epochs(stage: Stage, cfg: RunConfig) -> int:
    return scale_schedule(stage, cfg.optim.epochs_scale).epochs


def set_trainable(method: nn.Module, stage: Stage) -> list[str]:
    """Freeze every parameter outside the stage's ``trainable`` prefixes; return the trained names."""
    names = []
    for name, p in method.named_parameters():
        p.requires_grad_(any(name.startswith(prefix) for prefix in stage.trainable))
        if p.requires_grad:
            names.append(name)
    if not names:
        raise ValueError(f"stage {stage.name!r}: no parameter matches trainable prefixes {stage.trainable}")
    return names


def param_groups(method: nn.Module, stage: Stage) -> list[dict]:
    """The stage's trainable parameters as optimizer groups: one group per lr
    multiplier of ``stage.param_groups`` (first matching prefix wins, 1.0 otherwise),
    each with ``lr`` and ``base_lr`` = ``stage.lr`` x multiplier. The plain
    optimizer, DDP and DeepSpeed all take these groups."""
    groups: dict[float, list[nn.Parameter]] = {}
    for name, p in method.named_parameters():
        if not p.requires_grad:
            continue
        mult = next((m for prefix, m in stage.param_groups if name.startswith(prefix)), 1.0)
        groups.setdefault(mult, []).append(p)
    return [{"params": ps, "lr": stage.lr * m, "base_lr": stage.lr * m} for m, ps in groups.items()]


def build_optimizer(method: nn.Module, stage: Stage) -> torch.optim.Optimizer:
    groups = param_groups(method, stage)
    if stage.optimizer == "adam":
        return torch.optim.Adam(groups, lr=stage.lr, weight_decay=stage.weight_decay)
    if stage.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=stage.lr, weight_decay=stage.weight_decay)
    return torch.optim.SGD(groups, lr=stage.lr, momentum=0.9, weight_decay=stage.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]
