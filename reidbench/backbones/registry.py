"""The registry of backbone kinds (``backbone.kind``).

A kind is a builder ``(preset, pretrained, image_size, num_cameras) -> backbone``;
every backbone offers the API the methods use (listed in :mod:`reidbench.backbones.api`).
"""

from __future__ import annotations

import difflib
import os
from typing import Callable

from torch import nn

BackboneBuilder = Callable[..., nn.Module]
_KINDS: dict[str, BackboneBuilder] = {}


def register_backbone(kind: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    def decorate(builder: BackboneBuilder) -> BackboneBuilder:
        if kind in _KINDS:
            raise ValueError(f"backbone kind {kind!r} registered twice")
        _KINDS[kind] = builder
        return builder

    return decorate


def list_backbones() -> list[str]:
    _load_kinds()
    return sorted(_KINDS)


def build_backbone(kind: str, preset: str, pretrained: str | os.PathLike | None,
                   image_size: tuple[int, int] | None = None, num_cameras: int = 0) -> nn.Module:
    """Build ``kind`` (e.g. ``clip``) at ``preset`` with ``pretrained`` weights."""
    _load_kinds()
    if kind not in _KINDS:
        close = difflib.get_close_matches(kind, _KINDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        raise ValueError(f"backbone.kind={kind!r} is not a backbone kind{hint} Known kinds: {', '.join(sorted(_KINDS))}")
    return _KINDS[kind](preset=preset, pretrained=pretrained, image_size=image_size, num_cameras=num_cameras)


def _load_kinds() -> None:
    from . import clip, vit_bert  # noqa: F401  (importing registers the kinds)


__all__ = ["build_backbone", "list_backbones", "register_backbone"]
