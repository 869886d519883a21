"""Backbones built from transformers configs (no downloads): CLIP (``clip`` kind) and
ViT + BERT (``vit_bert``) behind one API (:mod:`.api`), offline tokenizers, and the
contrastive pretraining of the tiny CLIP on synthetic captions.

``build_backbone(kind, preset, pretrained, image_size, num_cameras)``; ``list_backbones()``;
``build_clip(preset, pretrained, image_size, num_cameras, sie_coef) -> ReidCLIP``;
``list_presets()``; ``pretrain_tiny(PretrainConfig(), cache_dir)`` (also
``reidbench pretrain --preset tiny``).
"""

# Names resolve on first use (PEP 562), so importing a light submodule such as
# ``reidbench.backbones.pretrain_config`` (the CLI parser does) does not import torch.
_EXPORTS = {
    "api": ("CameraEmbedding", "ImageFeatures", "ImageTower", "TextFeatures"),
    "clip": ("CLIP_IMAGE_MEAN", "CLIP_IMAGE_STD", "PRESETS", "ClipPreset", "PersonPatchEmbeddings",
             "PretrainedCLIPNotFound", "ReidCLIP", "build_clip", "check_pretrained_dir", "count_parameters",
             "get_preset", "interpolate_pos_embedding", "list_presets"),
    "tokenizer": ("ClipTokenizer", "cache_root", "default_word_tokenizer", "load_tokenizer", "train_word_tokenizer"),
    "pretrain_config": ("PretrainConfig",),
    "vit_bert": ("PretrainedViTBertNotFound", "ReidViTBert", "ViTBertPreset", "build_vit_bert"),
    "registry": ("build_backbone", "list_backbones", "register_backbone"),
    "pretrain": ("pretrain_tiny", "ensure_pretrained_tiny", "zero_shot_attribute_accuracy"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = [
    "CLIP_IMAGE_MEAN",
    "CLIP_IMAGE_STD",
    "CameraEmbedding",
    "ClipPreset",
    "ClipTokenizer",
    "ImageFeatures",
    "ImageTower",
    "PRESETS",
    "PersonPatchEmbeddings",
    "PretrainConfig",
    "PretrainedCLIPNotFound",
    "PretrainedViTBertNotFound",
    "ReidCLIP",
    "ReidViTBert",
    "TextFeatures",
    "ViTBertPreset",
    "build_backbone",
    "build_clip",
    "build_vit_bert",
    "cache_root",
    "check_pretrained_dir",
    "count_parameters",
    "default_word_tokenizer",
    "ensure_pretrained_tiny",
    "get_preset",
    "interpolate_pos_embedding",
    "list_backbones",
    "list_presets",
    "load_tokenizer",
    "pretrain_tiny",
    "register_backbone",
    "train_word_tokenizer",
    "zero_shot_attribute_accuracy",
]
