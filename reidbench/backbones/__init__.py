"""CLIP backbones built from transformers configs (no downloads), offline tokenizers,
and the contrastive pretraining of the tiny CLIP on synthetic captions.

``build_clip(preset, pretrained, image_size, num_cameras, sie_coef) -> ReidCLIP``;
``list_presets()``; ``pretrain_tiny(PretrainConfig(), cache_dir)`` (also
``reidbench pretrain --preset tiny``).
"""

# Names resolve on first use (PEP 562), so importing a light submodule such as
# ``reidbench.backbones.pretrain_config`` (the CLI parser does) does not import torch.
_EXPORTS = {
    "clip": ("CLIP_IMAGE_MEAN", "CLIP_IMAGE_STD", "PRESETS", "ClipPreset", "ImageFeatures", "PersonPatchEmbeddings",
             "PretrainedCLIPNotFound", "ReidCLIP", "build_clip", "check_pretrained_dir", "count_parameters",
             "get_preset", "interpolate_pos_embedding", "list_presets"),
    "tokenizer": ("ClipTokenizer", "cache_root", "default_word_tokenizer", "load_tokenizer", "train_word_tokenizer"),
    "pretrain_config": ("PretrainConfig",),
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
    "ClipPreset",
    "ClipTokenizer",
    "ImageFeatures",
    "PRESETS",
    "PersonPatchEmbeddings",
    "PretrainConfig",
    "PretrainedCLIPNotFound",
    "ReidCLIP",
    "build_backbone",
    "build_clip",
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
