"""Building blocks shared by the CLIP-ReID family of methods, one module per concept.

* ``distances``: ``cosine_distance``, ``euclidean_dist`` (CLIP-ReID's clamped form).
* ``losses``: batch-hard ``TripletLoss``, ``CrossEntropyLabelSmooth``,
  CLIP-ReID's ``supcon_loss`` / ``i2t_t2i_losses`` and the stage-2 ``ReidObjective``.
* ``heads``: ``BNNeck`` and CLIP-ReID's ``DualNeckHead`` (with their inits).
* ``prompts``: ``PromptLearner`` (CLIP-ReID / CoOp context tokens).
* ``banks``: ``FeatureBank``, features cached once before a stage.
* ``encoding``: ``encode_images``, ``camera_ids``, ``image_side_prefixes``.
* ``stages``: ``ImageStageConfig``, ``PromptStageConfig``, the ``PresetConfig`` mixin and the tiny
  preset's image-tower fine-tuning (``TINY_IMAGE_LR``, ``TINY_IMAGE_STAGE``).
* ``gradnorm``: ``GradNorm`` (learned task weights balanced by GradNorm, BDAM Eqs. 5-6)
  and its ``GradNormOutput``.

Everything follows the community reference code so that numbers are comparable
with published ones. Randomly initialised, paper-agnostic blocks (attention,
MLPs, HSIC) live in ``reidbench.methods.layers`` instead.

A backbone here is anything with the ``ReidCLIP`` API (``reidbench.backbones``):
``encode_image(pixels, camids) -> ImageFeatures(tokens, cls, proj)``,
``encode_text_embeddings(token_embeds, eos_index)``, ``token_embedding`` and
``tokenizer``.

Every public name is re-exported here, so ``from .components import X`` works
whichever module ``X`` lives in.
"""

from __future__ import annotations

from .banks import FeatureBank
from .distances import cosine_distance, euclidean_dist
from .encoding import TEXT_SIDE, camera_ids, encode_images, evaluating, image_side_prefixes
from .gradnorm import ALPHA_ROLES, GradNorm, GradNormOutput
from .heads import (
    BNNeck,
    DualNeckHead,
    HeadOutput,
    weights_init_classifier,
    weights_init_kaiming,
)
from .losses import (
    CrossEntropyLabelSmooth,
    ReidObjective,
    TripletLoss,
    hard_example_mining,
    i2t_t2i_losses,
    supcon_loss,
)
from .prompts import PromptLearner
from .stages import TINY_IMAGE_LR, TINY_IMAGE_STAGE, ImageStageConfig, PresetConfig, PromptStageConfig

__all__ = [
    "ALPHA_ROLES",
    "TEXT_SIDE",
    "BNNeck",
    "CrossEntropyLabelSmooth",
    "DualNeckHead",
    "FeatureBank",
    "GradNorm",
    "GradNormOutput",
    "HeadOutput",
    "ImageStageConfig",
    "PresetConfig",
    "PromptLearner",
    "PromptStageConfig",
    "ReidObjective",
    "TINY_IMAGE_LR",
    "TINY_IMAGE_STAGE",
    "TripletLoss",
    "camera_ids",
    "cosine_distance",
    "encode_images",
    "evaluating",
    "euclidean_dist",
    "hard_example_mining",
    "i2t_t2i_losses",
    "image_side_prefixes",
    "supcon_loss",
    "weights_init_classifier",
    "weights_init_kaiming",
]
