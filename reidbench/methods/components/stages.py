"""Stage recipes shared by the CLIP-ReID family (its prompt stage and its
image stage, each a config dataclass that builds the ``Stage``) and the preset
mixin every method config uses."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

from ..base import Stage
from .losses import ReidObjective


# The tiny preset's fine-tuning of the image tower (every image ReID method's tiny preset
# trains it at this lr, 12 epochs, warm-up 2, decay at epochs 8 and 11; new heads at 10x).
# Calibrated on the baseline (seed 0, last epoch) for the synthetically pretrained tiny
# CLIP (pretraining v3, results/tiny_lr_calibration.csv): its untrained features already
# score 64.3 mAP on synthetic_market and 78.1 / 10.0 (same clothes / cloth-changing) on
# synthetic_cc, and at the earlier 1e-4 (tuned on a weaker tiny CLIP) every method ended
# far below them (56.6; 38.8 / 6.3), while 1e-5 gave 67.9 and 56.4 / 11.4 (3e-6: 67.2,
# 76.6 / 10.6; 3e-5 on synthetic_market: 61.9). Shared so that the rows of a comparison
# differ by the method, not by its training budget. The text-to-image methods keep 1e-4,
# where t2i_baseline gains over the untrained model (87.3 against 1e-5's 87.1 mAP).
TINY_IMAGE_LR = 1e-5
TINY_IMAGE_STAGE: dict[str, Any] = {"epochs": 12, "lr": TINY_IMAGE_LR, "warmup_epochs": 2, "milestones": [8, 11],
                                    "head_lr_mult": 10.0}


@dataclass
class ImageStageConfig:
    """The image-encoder fine-tuning stage (CLIP-ReID's stage 2; the baseline's
    only stage). Defaults: the official ``configs/person/vit_clipreid.yml``."""

    epochs: int = 60
    lr: float = 5e-6
    warmup_epochs: int = 10
    warmup_factor: float = 0.1  # linear warmup from lr * warmup_factor
    milestones: tuple[int, ...] = (30, 50)
    gamma: float = 0.1
    weight_decay: float = 1e-4
    head_lr_mult: float = 1.0  # lr multiplier of the new BNNecks/classifiers (official: 1, LARGE_FC_LR False)
    label_smoothing: float = 0.1
    triplet_margin: float = 0.3
    triplet_soft_margin: bool = False  # official NO_MARGIN switch: soft-margin triplet instead of margin
    triplet_normalize: bool = False  # L2-normalise features before the triplet's euclidean distances
    triplet_on_penultimate: bool = True  # official ViT: triplet also on the penultimate layer's CLS token
    id_loss_weight: float = 0.25  # official ID_LOSS_WEIGHT (the ID loss is summed over both necks)
    triplet_loss_weight: float = 1.0
    # 1: the official scheduler is stepped at the start of each epoch (Stage.schedule_offset), so
    # warm-up ends after epoch 9 and the lr decays from epochs 29 and 49 (0-based); 0: our epoch count.
    schedule_offset: int = 1

    def objective(self) -> ReidObjective:
        return ReidObjective(self.label_smoothing, None if self.triplet_soft_margin else self.triplet_margin,
                             self.triplet_normalize)

    def stage(self, name: str, trainable: tuple[str, ...], head_prefix: str,
              extra_loss_weights: tuple[tuple[str, float], ...] = ()) -> Stage:
        """The Stage: Adam, linear warmup then step decay; ``id``/``triplet`` weights
        plus ``extra_loss_weights`` for a method's own terms."""
        return Stage(name=name, epochs=self.epochs, lr=self.lr, trainable=trainable, optimizer="adam",
                     weight_decay=self.weight_decay, schedule="steps", warmup_epochs=self.warmup_epochs,
                     warmup_factor=self.warmup_factor, milestones=tuple(self.milestones), gamma=self.gamma,
                     schedule_offset=self.schedule_offset,
                     param_groups=((head_prefix, self.head_lr_mult),) if self.head_lr_mult != 1.0 else (),
                     loss_weights=(("id", self.id_loss_weight), ("triplet", self.triplet_loss_weight),
                                   *extra_loss_weights))


@dataclass
class PromptStageConfig:
    """CLIP-ReID's stage 1 (prompt learning with frozen encoders). Defaults: the
    official config (Adam 3.5e-4, 120 epochs, 5 warmup epochs from 1e-5, cosine,
    weight decay 1e-4) and its ``SupConLoss`` (raw dot products, T = 1)."""

    epochs: int = 120
    lr: float = 3.5e-4
    warmup_epochs: int = 5
    warmup_lr: float = 1e-5
    weight_decay: float = 1e-4
    temperature: float = 1.0
    normalize: bool = False  # cosine similarity instead of the raw dot product in the i2t/t2i losses
    schedule_offset: int = 1  # the official scheduler.step(epoch) at the start of epoch 1, 2, ... (Stage)

    def stage(self, name: str, trainable: tuple[str, ...]) -> Stage:
        return Stage(name=name, epochs=self.epochs, lr=self.lr, trainable=trainable, optimizer="adam",
                     weight_decay=self.weight_decay, schedule="cosine", warmup_epochs=self.warmup_epochs,
                     warmup_factor=self.warmup_lr / self.lr, schedule_offset=self.schedule_offset)


class PresetConfig:
    """Mixin for method configs: the dataclass defaults are the paper's values;
    ``PRESETS`` maps other preset names to overrides of them."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def preset(cls, name: str) -> dict[str, Any]:
        """Overrides of the defaults for preset ``name`` (``paper``: none)."""
        if name == "paper":
            return copy.deepcopy(cls.PRESETS.get("paper", {}))
        if name not in cls.PRESETS:
            known = sorted({"paper", *cls.PRESETS})
            raise KeyError(f"{cls.__name__}: unknown preset {name!r}; known: {', '.join(known)}")
        return copy.deepcopy(cls.PRESETS[name])


__all__ = ["TINY_IMAGE_LR", "TINY_IMAGE_STAGE", "ImageStageConfig", "PresetConfig", "PromptStageConfig"]
