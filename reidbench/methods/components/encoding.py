"""Backbone helpers: running the image tower on a batch (with the camera ids
SIE wants) and naming the backbone's image side for ``Stage.trainable``."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

TEXT_SIDE = ("text", "text_projection", "token_embedding", "logit_scale")


def image_side_prefixes(backbone: nn.Module, root: str = "backbone") -> tuple[str, ...]:
    """Parameter-name prefixes (for ``Stage.trainable``) of everything in the
    backbone except the text side (``TEXT_SIDE``): the vision tower, its
    projection and any camera (SIE) embedding, wherever the backbone keeps it.
    Submodules get a trailing dot so ``backbone.text`` never matches
    ``backbone.text_projection``. A backbone that names its image side
    (``image_modules``, as every registered kind does) is taken at its word."""
    named = getattr(backbone, "image_modules", None)
    if named is not None:
        parts = [(name, getattr(backbone, name, None)) for name in named]
        return tuple(f"{root}.{name}." if isinstance(part, nn.Module) else f"{root}.{name}"
                     for name, part in parts if part is not None)
    out = []
    for name, _ in backbone.named_parameters():
        top, dot, _rest = name.partition(".")
        if top in TEXT_SIDE:
            continue
        prefix = f"{root}.{top}{dot}"
        if prefix not in out:
            out.append(prefix)
    if not out:
        raise ValueError("the backbone has no image-side parameters (everything is in "
                         f"{', '.join(TEXT_SIDE)})")
    return tuple(out)


def camera_ids(backbone: nn.Module, batch: dict, use_sie: bool) -> torch.Tensor | None:
    """The batch's camera ids when SIE is on and the backbone has a camera
    embedding (it has one only if built with ``num_cameras > 0``), else None."""
    if not use_sie or not getattr(backbone, "num_cameras", 0):
        return None
    return batch["camid"]


def encode_images(backbone: nn.Module, batch: dict, use_sie: bool, return_hidden: bool = False) -> Any:
    """``backbone.encode_image`` on ``batch["image"]`` with the camera ids SIE
    wants; ``return_hidden`` also returns per-layer states (for the penultimate
    CLS of the official triplet)."""
    camids = camera_ids(backbone, batch, use_sie)
    if return_hidden:
        return backbone.encode_image(batch["image"], camids, return_hidden=True)
    return backbone.encode_image(batch["image"], camids)


__all__ = ["TEXT_SIDE", "camera_ids", "encode_images", "evaluating", "image_side_prefixes"]


@contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode for the block, its previous mode restored afterwards
    (``begin_stage`` passes that precompute features)."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)

