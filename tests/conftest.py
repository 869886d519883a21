"""Shared fixtures: ``fake_backbone_kind`` registers ``backbone.kind=fake`` (the tiny
``FakeCLIP`` of ``fakes.py``) so that a real ``fit`` runs in seconds on CPU."""

from __future__ import annotations

import pytest

FAKE_KIND = "fake"


def build_fake_backbone(preset: str, pretrained, image_size, num_cameras: int):
    from fakes import FakeCLIP

    if pretrained is not None:
        raise ValueError(f"backbone.kind={FAKE_KIND} has no pretrained weights (got backbone.pretrained={pretrained!r}); "
                         "set backbone.pretrained=null")
    size = tuple(image_size) if image_size is not None else (32, 16)
    return FakeCLIP(num_cameras=num_cameras, context_length=32, image_size=size)


@pytest.fixture(scope="session")
def fake_backbone_kind() -> str:
    from reidbench.backbones import list_backbones, register_backbone

    if FAKE_KIND not in list_backbones():
        register_backbone(FAKE_KIND)(build_fake_backbone)
    return FAKE_KIND
