"""Optimizers and learning-rate schedules of a stage (the trainer's, DDP's and DeepSpeed's alike).

``param_groups`` is the one place where a stage's parameters become optimizer groups
(prefix -> lr multiplier and weight decay); ``build_optimizer`` turns them into a torch
optimizer, and ``distributed.deepspeed_engine`` hands the very same group dicts to
DeepSpeed. ``set_lr`` then scales every group from its own ``base_lr``.
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
    ``warmup_factor``, then cosine to 0, step decay at ``milestones``, or constant.

    The schedule is read at ``t = epoch + stage.schedule_offset``: with offset 1 it is
    CLIP-ReID's ``WarmupMultiStepLR`` stepped at the start of every epoch (its first epoch
    trains at ``last_epoch = 1``), so warm-up reaches the full lr at epoch ``warmup - 1``
    and a milestone ``m`` decays from epoch ``m - 1`` on; the cosine then reaches 0 at the
    last epoch (CLIP-ReID's stage-1 timm cosine reaches its ``lr_min`` there)."""
    t = epoch + stage.schedule_offset
    if t < stage.warmup_epochs:
        alpha = t / stage.warmup_epochs
        return stage.warmup_factor * (1 - alpha) + alpha
    if stage.schedule == "cosine":
        progress = min(1.0, (t - stage.warmup_epochs) / max(1, epochs - stage.warmup_epochs))
        return 0.5 * (1 + math.cos(math.pi * progress))
    if stage.schedule == "steps":
        return stage.gamma ** bisect.bisect_right(stage.milestones, t)
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


def _group_rule(stage: Stage, entry: tuple) -> tuple[str, float, float | None]:
    """``(prefix, lr_mult)`` or ``(prefix, lr_mult, weight_decay)`` checked -> (prefix, mult, decay or None)."""
    if not isinstance(entry, (tuple, list)) or len(entry) not in (2, 3) or not isinstance(entry[0], str):
        raise ValueError(f"stage {stage.name!r}: param_groups entry {entry!r} must be (prefix, lr_mult) or "
                         "(prefix, lr_mult, weight_decay)")
    prefix, mult, *decay = entry
    values = [("lr_mult", mult), *(("weight_decay", d) for d in decay)]
    for label, value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"stage {stage.name!r}: param_groups entry {entry!r} has {label}={value!r}; "
                             "expected a finite number >= 0")
    return prefix, float(mult), float(decay[0]) if decay else None


def param_groups(method: nn.Module, stage: Stage) -> list[dict]:
    """The stage's trainable parameters as optimizer groups.

    Each parameter takes the lr multiplier and weight decay of the first
    ``stage.param_groups`` entry whose prefix its name starts with (multiplier 1 and
    ``stage.weight_decay`` when none matches, or when the entry gives no decay); with
    ``stage.no_decay_1d`` a parameter of at most one dimension gets decay 0 whatever
    its entry says. Parameters sharing (multiplier, decay) form one group, in the
    order their first parameter appears in ``method.named_parameters()``, so every
    rank and every strategy builds the same list. Each group carries ``lr`` and
    ``base_lr`` (= ``stage.lr`` x multiplier) and ``weight_decay``: the optimizer's
    own defaults (and DeepSpeed's config ``lr``/``weight_decay``) never apply.
    """
    rules = [_group_rule(stage, entry) for entry in stage.param_groups]
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in method.named_parameters():
        if not p.requires_grad:
            continue
        mult, decay = next(((m, d) for prefix, m, d in rules if name.startswith(prefix)), (1.0, None))
        decay = stage.weight_decay if decay is None else decay
        # A ZeRO-3 partitioned parameter (a later stage of a DeepSpeed run) keeps its shape in ds_shape.
        if stage.no_decay_1d and len(getattr(p, "ds_shape", p.shape)) <= 1:
            decay = 0.0
        groups.setdefault((mult, decay), []).append(p)
    return [{"params": ps, "lr": stage.lr * mult, "base_lr": stage.lr * mult, "weight_decay": decay}
            for (mult, decay), ps in groups.items()]


def build_optimizer(method: nn.Module, stage: Stage) -> torch.optim.Optimizer:
    """The stage's torch optimizer over ``param_groups(method, stage)``; SGD uses momentum 0.9."""
    groups = param_groups(method, stage)
    if stage.optimizer == "adam":
        return torch.optim.Adam(groups, lr=stage.lr, weight_decay=stage.weight_decay)
    if stage.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=stage.lr, weight_decay=stage.weight_decay)
    return torch.optim.SGD(groups, lr=stage.lr, momentum=0.9, weight_decay=stage.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Every group's lr = its ``base_lr`` x ``factor``; returns the first group's lr (the one logged)."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]
