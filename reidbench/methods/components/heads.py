"""Identity heads: bag-of-tricks' ``BNNeck`` (Luo et al. 2019: BatchNorm1d with
a frozen zero bias, then a bias-free classifier; kaiming / normal(0.001) init)
and CLIP-ReID's stage-2 ``DualNeckHead`` (BNNecks on the CLS feature and on its
projection), reused by the baseline and by methods built on CLIP-ReID."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


def weights_init_kaiming(module: nn.Module) -> None:
    """bag-of-tricks init: kaiming for linear/conv, BatchNorm weight 1 bias 0."""
    if isinstance(module, nn.Linear):
        nn.init.kaiming_normal_(module.weight, a=0, mode="fan_out")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if module.affine:
            nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def weights_init_classifier(module: nn.Module) -> None:
    """bag-of-tricks classifier init: normal(0, 0.001), zero bias."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.001)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class BNNeck(nn.Module):
    """BatchNorm1d with a frozen zero bias, then a bias-free identity classifier.

    The bias is a zero *buffer* rather than a parameter with
    ``requires_grad=False``: a trainer that sets ``requires_grad`` by name
    prefix per stage would otherwise silently unfreeze it. The state-dict key
    (``bn.bias``) is the reference one.

    ``forward(x) -> (x_bn, logits)``; ``logits`` is ``None`` when
    ``num_classes`` is 0 (a neck without classifier).
    """

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        del self.bn.bias
        self.bn.register_buffer("bias", torch.zeros(dim))
        weights_init_kaiming(self.bn)
        self.classifier = nn.Linear(dim, num_classes, bias=False) if num_classes > 0 else None
        if self.classifier is not None:
            weights_init_classifier(self.classifier)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x_bn = self.bn(x)
        logits = self.classifier(x_bn) if self.classifier is not None else None
        return x_bn, logits


@dataclass
class HeadOutput:
    """What ``DualNeckHead`` computes from one image batch."""

    cls: torch.Tensor  # [B, vision_width] CLS token (before BN)
    proj: torch.Tensor  # [B, embed_dim] projected CLS (before BN)
    cls_bn: torch.Tensor
    proj_bn: torch.Tensor
    logits: tuple[torch.Tensor, torch.Tensor]  # identity logits on cls_bn and proj_bn
    penultimate: torch.Tensor | None = None  # [B, vision_width] CLS of the penultimate layer, if asked for


class DualNeckHead(nn.Module):
    """CLIP-ReID's stage-2 head: a BNNeck on the CLS feature (vision width) and
    one on its projection (embedding width), each with an identity classifier.

    ``inference_feature`` is ``concat(cls, proj)`` with ``neck_feat="before"``
    (the official ``configs/person/vit_clipreid.yml`` sets ``TEST.NECK_FEAT:
    'before'``) or ``concat(cls_bn, proj_bn)`` with ``"after"`` (bag-of-tricks'
    default). Ranking uses cosine distance on it, which equals the official
    ``FEAT_NORM: 'yes'`` + euclidean ranking.
    """

    def __init__(self, vision_width: int, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.neck_cls = BNNeck(vision_width, num_classes)
        self.neck_proj = BNNeck(embed_dim, num_classes)

    def forward(self, image_features: Any) -> HeadOutput:
        """``image_features``: the backbone's ``ImageFeatures``; when it carries
        ``hidden_states`` (``encode_image(..., return_hidden=True)``) the
        penultimate layer's CLS token is passed on for the triplet loss."""
        cls, proj = image_features.cls, image_features.proj
        cls_bn, logits_cls = self.neck_cls(cls)
        proj_bn, logits_proj = self.neck_proj(proj)
        hidden = getattr(image_features, "hidden_states", None)
        penultimate = hidden[-2][:, 0] if hidden is not None and len(hidden) >= 2 else None
        return HeadOutput(cls, proj, cls_bn, proj_bn, (logits_cls, logits_proj), penultimate)

    @staticmethod
    def inference_feature(out: HeadOutput, neck_feat: str) -> torch.Tensor:
        if neck_feat == "before":
            return torch.cat([out.cls, out.proj], dim=1)
        if neck_feat == "after":
            return torch.cat([out.cls_bn, out.proj_bn], dim=1)
        raise ValueError(f"neck_feat must be 'before' or 'after', got {neck_feat!r}")


__all__ = ["BNNeck", "DualNeckHead", "HeadOutput", "weights_init_classifier", "weights_init_kaiming"]
