"""The "Baseline" row of CLIP-ReID-family ablation tables: the CLIP image
encoder fine-tuned with identity (label-smoothed CE through BNNecks) and
batch-hard triplet losses only, no text.

It is CLIP-ReID's stage 2 without ``i2tce`` (and without stage 1): same head
(BNNecks on the CLS feature and on its projection), same loss weights, same
schedule, same inference feature (``concat(cls, proj)`` before the BNNecks by
default) and cosine ranking, so that the difference between the two rows is the
text supervision alone. The official repository's ``configs/person/vit_base.yml``
trains its baseline the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from ..datasets.transforms import CLIP_REID_MEAN, CLIP_REID_STD
from .base import DataSpec, Method, Stage, register_method
from .components import (TINY_IMAGE_STAGE, DualNeckHead, ImageStageConfig, PresetConfig, encode_images,
                         image_side_prefixes)

IMAGE_STAGE = "image"


@dataclass
class BaselineConfig(PresetConfig):
    """Defaults: the paper's stage-2 values (Adam 5e-6, 60 epochs, warmup 10, steps at 30/50)."""

    sie: bool = True  # use the backbone's camera embedding when it has one
    neck_feat: Literal["before", "after"] = "before"
    image: ImageStageConfig = field(default_factory=ImageStageConfig)

    # tiny: every image method's tiny image stage (components.TINY_IMAGE_STAGE, calibrated on
    # this baseline), so the rows of a comparison differ only by the method.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {"image": TINY_IMAGE_STAGE}}


@register_method
class Baseline(Method):
    """Identity + triplet fine-tuning of the CLIP image encoder (one stage)."""

    name = "baseline"
    config_cls = BaselineConfig
    PRESETS = {"paper": BaselineConfig.preset("paper"), "tiny": BaselineConfig.preset("tiny")}
    DATA_RECIPE = {"pixel_mean": CLIP_REID_MEAN, "pixel_std": CLIP_REID_STD}  # clip_reid's, as vit_base.yml

    def __init__(self, config: BaselineConfig, backbone: torch.nn.Module, spec: DataSpec) -> None:
        super().__init__(config, backbone, spec)
        num_classes = spec.num_classes
        self.head = DualNeckHead(backbone.vision_width, backbone.embed_dim, num_classes)
        self.objective = config.image.objective()

    def stages(self) -> list[Stage]:
        return [self.config.image.stage(IMAGE_STAGE, trainable=(*image_side_prefixes(self.backbone), "head."),
                                        head_prefix="head.")]

    def training_step(self, batch: dict, stage: Stage) -> dict[str, torch.Tensor]:
        if stage.name != IMAGE_STAGE:
            raise ValueError(f"baseline has one stage {IMAGE_STAGE!r}, got {stage.name!r}")
        cfg = self.config
        feats = encode_images(self.backbone, batch, cfg.sie, cfg.image.triplet_on_penultimate)
        return self.objective(self.head(feats), batch["pid"])

    def embed_image(self, batch: dict) -> torch.Tensor:
        feats = encode_images(self.backbone, batch, self.config.sie)
        return DualNeckHead.inference_feature(self.head(feats), self.config.neck_feat)
