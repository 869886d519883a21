"""CLIP backbones built from transformers configs (no downloads), offline tokenizers,
and the contrastive pretraining of the tiny CLIP on synthetic captions.

``build_clip(preset, pretrained, image_size, num_cameras, sie_coef) -> ReidCLIP``;
``list_presets()``; ``pretrain_tiny(PretrainConfig(), cache_dir)`` (also
``reidbench pretrain --preset tiny``).
"""

from .clip import (
    CLIP_IMAGE_MEAN,
    CLIP_IMAGE_STD,
    PRESETS,
    ClipPreset,
    ImageFeatures,
    PersonPatchEmbeddings,
    PretrainedCLIPNotFound,
    ReidCLIP,
    build_clip,
    check_pretrained_dir,
    count_parameters,
    get_preset,
    interpolate_pos_embedding,
    list_presets,
)
from .tokenizer import ClipTokenizer, cache_root, default_word_tokenizer, load_tokenizer, train_word_tokenizer


def __getattr__(name):
    # pretrain pulls in the synthetic renderer; import it only when asked for.
    if name in ("PretrainConfig", "pretrain_tiny", "ensure_pretrained_tiny", "zero_shot_attribute_accuracy"):
        from . import pretrain

        return getattr(pretrain, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CLIP_IMAGE_MEAN",
    "CLIP_IMAGE_STD",
    "ClipPreset",
    "ClipTokenizer",
    "ImageFeatures",
    "PRESETS",
    "PersonPatchEmbeddings",
    "PretrainConfig",
    "PretrainedCLIPNotFound",
    "ReidCLIP",
    "build_clip",
    "cache_root",
    "check_pretrained_dir",
    "count_parameters",
    "default_word_tokenizer",
    "ensure_pretrained_tiny",
    "get_preset",
    "interpolate_pos_embedding",
    "list_presets",
    "load_tokenizer",
    "pretrain_tiny",
    "train_word_tokenizer",
    "zero_shot_attribute_accuracy",
]
