"""A ViT image tower and a BERT text tower (transformers' ``ViTModel`` and
``BertModel``) behind the backbone API of :mod:`reidbench.backbones.api`: the
``vit_bert`` kind, as BDAM's paper uses it (ViT-B/16 + bert-base-uncased).

``build_vit_bert(preset, pretrained, image_size, num_cameras)`` returns a :class:`ReidViTBert`:

* presets: ``base`` (ViT-B/16 and BERT-base shapes, 256x128 person crops) and
  ``tiny`` (small random towers for tests and CPU runs, 128x64);
* ``pretrained``: ``None`` (random init, WordPiece vocabulary written offline
  from the synthetic generator's words) or a local folder holding ``vision/``
  (a ``ViTModel`` Hugging Face directory) and ``text/`` (a ``BertModel``
  directory with its tokenizer). ``"synthetic"`` is the tiny CLIP's and is refused.

Decisions:

* One folder with two sub-folders rather than two paths: one config value
  (``backbone.pretrained=DIR``), nothing to split; symbolic links serve users who
  keep the two downloads elsewhere. The projections and the temperature are not
  part of either pretrained model and start at random.
* Image embedding: ViT's CLS after its final layer norm, through
  ``visual_projection`` (bias-free linear, as CLIP) to ``embed_dim``; ViT's
  pooler (dense + tanh, trained for ImageNet classification) is not built.
* Text embedding: BERT's last-layer [CLS] state through ``text_projection``;
  BERT's pooler (trained for next-sentence prediction) is not built either.
  ``encode_text_embeddings(token_embeds, eos_index)`` attends through
  ``eos_index`` ([SEP], where prompt learners end their prompts) and pools at
  [CLS] like ``encode_text``, so the two agree on the same tokens; pooling at
  ``eos_index`` instead would make a learned prompt and the same words typed
  as text two different embeddings.
* ``embed_dim`` = 768 for ``base`` (both towers' width; BDAM aligns image
  features to the text dimension), 128 for ``tiny``.
* Person crops are not square: the position table is built for the person
  grid (16x8 patches at 256x128) and a pretrained square table (14x14 at 224) is
  resized to it once at load time, bilinearly as :mod:`reidbench.backbones.clip`
  does for CLIP.
* SIE (``num_cameras > 0``): a :class:`~reidbench.backbones.api.CameraEmbedding`
  (coefficient 3.0) added to the CLS token after the position embedding, as
  CLIP-ReID does on CLIP.
* Pixel normalisation: ``image_mean``/``image_std`` from
  ``vision/preprocessor_config.json`` when it has them, else 0.5/0.5 (what
  google/vit-base-patch16-224 was trained with).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .api import CameraEmbedding, ImageFeatures, ImageTower, TextFeatures, TowerPreset, mask_through
from .clip import WEIGHT_FILES, interpolate_pos_embedding
from .registry import register_backbone
from .tokenizer import ClipTokenizer, default_wordpiece_tokenizer, has_bert_tokenizer_files, load_bert_tokenizer

VIT_IMAGE_MEAN = (0.5, 0.5, 0.5)
VIT_IMAGE_STD = (0.5, 0.5, 0.5)

_EXPORT_HINT = (
    "On a machine with internet, write it with:\n"
    "    python -c \"from transformers import ViTModel, BertModel, AutoTokenizer, AutoImageProcessor; "
    "ViTModel.from_pretrained('google/vit-base-patch16-224').save_pretrained('DIR/vision'); "
    "AutoImageProcessor.from_pretrained('google/vit-base-patch16-224').save_pretrained('DIR/vision'); "
    "BertModel.from_pretrained('bert-base-uncased').save_pretrained('DIR/text'); "
    "AutoTokenizer.from_pretrained('bert-base-uncased').save_pretrained('DIR/text')\"\n"
    "then copy DIR to this machine and pass backbone.pretrained=DIR."
)


class PretrainedViTBertNotFound(FileNotFoundError):
    """A named ``vit_bert`` pretrained folder is missing or incomplete."""


@dataclass(frozen=True)
class ViTBertPreset(TowerPreset):
    """Architecture of a named ViT + BERT pair. ``image_size`` is the default person
    crop (H, W); ``context_length`` the tokenizer's padded length."""

    text_positions: int = 512  # BERT's max_position_embeddings
    dropout: float = 0.1  # BERT's hidden and attention dropout (bert-base-uncased: 0.1)

    def vit_config(self, image_size: tuple[int, int]):
        from transformers import ViTConfig

        return ViTConfig(hidden_size=self.vision_width, num_hidden_layers=self.vision_layers,
                         num_attention_heads=self.vision_heads, intermediate_size=4 * self.vision_width,
                         patch_size=self.patch_size, image_size=list(image_size))

    def bert_config(self, vocab_size: int, pad_token_id: int):
        from transformers import BertConfig

        return BertConfig(vocab_size=vocab_size, hidden_size=self.text_width, num_hidden_layers=self.text_layers,
                          num_attention_heads=self.text_heads, intermediate_size=4 * self.text_width,
                          max_position_embeddings=self.text_positions, pad_token_id=pad_token_id,
                          hidden_dropout_prob=self.dropout, attention_probs_dropout_prob=self.dropout)


PRESETS: dict[str, ViTBertPreset] = {
    "base": ViTBertPreset(
        name="base",
        description="ViT-B/16 + BERT-base (BDAM's google/vit-base-patch16-224 + bert-base-uncased), 256x128 crops",
        vision_width=768, vision_layers=12, vision_heads=12, patch_size=16, image_size=(256, 128),
        text_width=768, text_layers=12, text_heads=12, text_positions=512, context_length=77,
        embed_dim=768, vocab_size=30522,
    ),
    "tiny": ViTBertPreset(
        name="tiny",
        description="random ViT 192x4 on 128x64 (8x4 patches) + BERT 128x2, 77 tokens, for tests and CPU runs",
        vision_width=192, vision_layers=4, vision_heads=3, patch_size=16, image_size=(128, 64),
        text_width=128, text_layers=2, text_heads=2, text_positions=77, context_length=77,
        embed_dim=128, vocab_size=None,
    ),
}


def list_presets() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> ViTBertPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown vit_bert preset {name!r}; known presets: {', '.join(list_presets())}")
    return PRESETS[name]


class ReidViTBert(nn.Module):
    """ViT + BERT with the backbone API (see :mod:`reidbench.backbones.api`).

    Attributes: ``vision`` (``ViTModel`` without pooler, position table at the
    person grid), ``camera_embedding`` (SIE, or ``None``), ``text``
    (``BertModel`` without pooler), ``visual_projection``, ``text_projection``,
    ``logit_scale``, ``tokenizer`` ([CLS] = BOS, [SEP] = EOS), and the sizes.
    """

    kind = "vit_bert"
    image_modules = ("vision", "camera_embedding", "visual_projection")
    image_attributes = ("image_size", "patch_grid", "patch_size", "num_cameras", "vision_width", "embed_dim",
                        "image_mean", "image_std")

    def __init__(self, vision: nn.Module, text: nn.Module, tokenizer: ClipTokenizer, embed_dim: int,
                 num_cameras: int = 0, sie_coef: float = 3.0, preset: str = "",
                 image_mean: tuple[float, ...] = VIT_IMAGE_MEAN, image_std: tuple[float, ...] = VIT_IMAGE_STD) -> None:
        super().__init__()
        vcfg, tcfg = vision.config, text.config
        if len(tokenizer.hf) > tcfg.vocab_size:
            raise ValueError(f"the tokenizer has {len(tokenizer.hf)} ids but BERT's embedding only "
                             f"{tcfg.vocab_size} rows")
        if tokenizer.context_length > tcfg.max_position_embeddings:
            raise ValueError(f"context_length {tokenizer.context_length} exceeds BERT's "
                             f"{tcfg.max_position_embeddings} positions")
        self.preset = preset
        self.tokenizer = tokenizer
        self.image_size = tuple(int(x) for x in vision.embeddings.patch_embeddings.image_size)
        self.patch_size = int(vcfg.patch_size)
        self.patch_grid = (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)
        self.vision_width = int(vcfg.hidden_size)
        self.text_width = int(tcfg.hidden_size)
        self.embed_dim = int(embed_dim)
        self.num_cameras = int(num_cameras)
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)

        self.vision = vision
        self.camera_embedding = (CameraEmbedding(num_cameras, self.vision_width, sie_coef)
                                 if num_cameras > 0 else None)
        self.text = text
        self.visual_projection = nn.Linear(self.vision_width, self.embed_dim, bias=False)
        self.text_projection = nn.Linear(self.text_width, self.embed_dim, bias=False)
        nn.init.normal_(self.visual_projection.weight, std=self.vision_width**-0.5)
        nn.init.normal_(self.text_projection.weight, std=self.text_width**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature

    # ------------------------------------------------------------ image ---
    def encode_image(self, pixels: torch.Tensor, camids: torch.Tensor | None = None,
                     return_hidden: bool = False) -> ImageFeatures:
        """``pixels [B,3,H,W]`` normalised with ``image_mean``/``image_std``; ``camids``
        (0-based) add the SIE camera embedding when the model has one (ignored otherwise)."""
        if pixels.dim() != 4 or tuple(pixels.shape[-2:]) != self.image_size:
            raise ValueError(f"encode_image expects [B,3,{self.image_size[0]},{self.image_size[1]}] pixels "
                             f"(this backbone's image_size), got {list(pixels.shape)}")
        vision = self.vision
        hidden = vision.embeddings(pixels.to(vision.embeddings.patch_embeddings.projection.weight.dtype))
        if self.camera_embedding is not None and camids is not None:
            hidden = self.camera_embedding(hidden, camids)
        states = [hidden] if return_hidden else None
        for layer in vision.layers:
            hidden = layer(hidden, None)
            if states is not None:
                states.append(hidden)
        tokens = vision.layernorm(hidden)
        cls = tokens[:, 0]
        return ImageFeatures(tokens=tokens, cls=cls, proj=self.visual_projection(cls),
                             hidden_states=tuple(states) if states is not None else None)

    def image_tower(self) -> ImageTower:
        """``vision``, the SIE table and ``visual_projection`` as a module sharing
        this model's parameters; ``copy.deepcopy`` it for a second image encoder."""
        return ImageTower(self, self.image_modules, self.image_attributes)

    # ------------------------------------------------------------- text ---
    @property
    def token_embedding(self) -> nn.Embedding:
        return self.text.embeddings.word_embeddings

    def eos_positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Index of each row's first [SEP]; rows without one (truncated by hand) fall
        back to their last attended token (needs ``attention_mask``)."""
        is_eos = input_ids == self.tokenizer.eos_token_id
        has_eos = is_eos.any(dim=1)
        index = is_eos.int().argmax(dim=1)
        if not bool(has_eos.all()):
            if attention_mask is None:
                rows = (~has_eos).nonzero().flatten().tolist()
                raise ValueError(f"rows {rows} of input_ids contain no [SEP] id {self.tokenizer.eos_token_id}; "
                                 f"tokenize with model.tokenizer or pass attention_mask")
            index = torch.where(has_eos, index, attention_mask.long().sum(dim=1).clamp(min=1) - 1)
        return index

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Text embedding ``[B, embed_dim]``: BERT's [CLS] state, projected."""
        return self.encode_text_tokens(input_ids, attention_mask).proj

    def encode_text_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TextFeatures:
        """BERT on token ids (attention limited to ``attention_mask``; default:
        through each row's [SEP]) -> :class:`TextFeatures` pooled at [CLS]."""
        eos_index = self.eos_positions(input_ids, attention_mask)
        return self.encode_text_embeddings_tokens(self.token_embedding(input_ids), eos_index, attention_mask)

    def encode_text_embeddings(self, token_embeds: torch.Tensor, eos_index: torch.Tensor) -> torch.Tensor:
        """BERT on word embeddings ``[B, L, text_width]`` (prompt learners splice
        learnable vectors in), attending through ``eos_index``, pooled at [CLS]."""
        return self.encode_text_embeddings_tokens(token_embeds, eos_index).proj

    def encode_text_embeddings_tokens(self, token_embeds: torch.Tensor, eos_index: torch.Tensor,
                                      attention_mask: torch.Tensor | None = None) -> TextFeatures:
        """:meth:`encode_text_embeddings` keeping every position's state. Attention
        is bidirectional, so padding must be masked: ``attention_mask`` when given,
        else 1 through ``eos_index``."""
        batch, length, _ = token_embeds.shape
        if length > self.text.config.max_position_embeddings:
            raise ValueError(f"sequence of {length} tokens exceeds BERT's {self.text.config.max_position_embeddings} positions")
        eos_index = torch.as_tensor(eos_index, device=token_embeds.device).long().reshape(-1)
        if eos_index.numel() != batch:
            raise ValueError(f"eos_index has {eos_index.numel()} entries for a batch of {batch}")
        if attention_mask is None:
            attention_mask = mask_through(eos_index, length)
        tokens = self.text(inputs_embeds=token_embeds, attention_mask=attention_mask).last_hidden_state
        pool_index = torch.zeros(batch, dtype=torch.long, device=tokens.device)
        return TextFeatures(tokens=tokens, proj=self.text_projection(tokens[:, 0]), attention_mask=attention_mask,
                            pool_index=pool_index)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Tokenize with this model's tokenizer and encode."""
        batch = self.tokenizer(texts)
        device = self.logit_scale.device
        return self.encode_text(batch["input_ids"].to(device), batch["attention_mask"].to(device))

    def extra_repr(self) -> str:
        return (f"preset={self.preset!r}, image_size={self.image_size}, patch_grid={self.patch_grid}, "
                f"embed_dim={self.embed_dim}, num_cameras={self.num_cameras}")


# ------------------------------------------------------------- loading ---
def check_pretrained_dir(directory: str | os.PathLike) -> Path:
    """Raise :class:`PretrainedViTBertNotFound` listing everything missing if
    ``directory`` is not ``vision/`` (ViT) + ``text/`` (BERT and tokenizer)."""
    path = Path(directory).expanduser()
    layout = (f"Expected {path}/vision (a ViTModel Hugging Face directory: config.json and model.safetensors "
              f"or pytorch_model.bin) and {path}/text (a BertModel directory: config.json, weights, and "
              f"tokenizer.json or vocab.txt).")
    if not path.is_dir():
        raise PretrainedViTBertNotFound(f"pretrained vit_bert folder {path} does not exist. {layout}\n{_EXPORT_HINT}")
    problems = []
    for sub in ("vision", "text"):
        folder = path / sub
        if not folder.is_dir():
            problems.append(f"{folder} is missing")
            continue
        if not (folder / "config.json").is_file():
            problems.append(f"{folder}/config.json is missing")
        if not any((folder / name).is_file() for name in WEIGHT_FILES):
            problems.append(f"{folder} has no model weights ({', '.join(WEIGHT_FILES)})")
    if (path / "text").is_dir() and not has_bert_tokenizer_files(path / "text"):
        problems.append(f"{path / 'text'} has no tokenizer files (tokenizer.json or vocab.txt)")
    if problems:
        raise PretrainedViTBertNotFound(f"pretrained vit_bert folder {path} is incomplete: {'; '.join(problems)}. "
                                        f"{layout}\n{_EXPORT_HINT}")
    return path


def _check_shapes(spec: ViTBertPreset, vcfg, tcfg, directory: Path) -> None:
    found = {
        "vision_width": (vcfg.hidden_size, "vision"), "vision_layers": (vcfg.num_hidden_layers, "vision"),
        "vision_heads": (vcfg.num_attention_heads, "vision"), "patch_size": (vcfg.patch_size, "vision"),
        "text_width": (tcfg.hidden_size, "text"), "text_layers": (tcfg.num_hidden_layers, "text"),
        "text_heads": (tcfg.num_attention_heads, "text"),
    }
    wrong = [f"{k}: {sub}/ has {v}, preset {getattr(spec, k)}" for k, (v, sub) in found.items() if v != getattr(spec, k)]
    if wrong:
        raise ValueError(f"{directory} holds a different ViT/BERT than vit_bert preset {spec.name!r} ({'; '.join(wrong)})")


def _grid_of(vcfg) -> tuple[int, int]:
    size = vcfg.image_size
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return height // vcfg.patch_size, width // vcfg.patch_size


def _load_tower(cls, folder: Path, what: str):
    """``cls.from_pretrained`` offline; any weight the file lacks is an error (transformers
    would only warn and leave it random)."""
    model, info = cls.from_pretrained(str(folder), local_files_only=True, add_pooling_layer=False,
                                      output_loading_info=True)
    missing = sorted(info.get("missing_keys", ()))
    mismatched = info.get("mismatched_keys", ())
    if missing or mismatched:
        raise ValueError(f"{folder}: the {what} weights do not fit its config.json: missing {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}, mismatched {list(mismatched)[:8]}")
    return model


def _pixel_statistics(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    processor = folder / "preprocessor_config.json"
    if processor.is_file():
        data = json.loads(processor.read_text())
        if "image_mean" in data and "image_std" in data:
            return tuple(float(x) for x in data["image_mean"]), tuple(float(x) for x in data["image_std"])
    return VIT_IMAGE_MEAN, VIT_IMAGE_STD


def build_vit_bert(preset: str = "tiny", pretrained: str | os.PathLike | None = None,
                   image_size: tuple[int, int] | None = None, num_cameras: int = 0, sie_coef: float = 3.0, *,
                   cache_dir: str | os.PathLike | None = None) -> ReidViTBert:
    """Build a :class:`ReidViTBert` at ``preset``: random (``pretrained=None``) or
    from a local folder with ``vision/`` and ``text/`` (see the module docstring);
    ``image_size`` (H, W) defaults to the preset's person crop."""
    from transformers import BertModel, ViTModel

    spec = get_preset(preset)
    size = tuple(int(x) for x in image_size) if image_size is not None else spec.image_size
    if len(size) != 2 or size[0] % spec.patch_size or size[1] % spec.patch_size:
        raise ValueError(f"image_size must be (height, width), multiples of the patch size {spec.patch_size}; "
                         f"got {image_size!r}")
    grid = (size[0] // spec.patch_size, size[1] // spec.patch_size)
    if pretrained is not None and str(pretrained) == "synthetic":
        raise ValueError("backbone.pretrained='synthetic' is the tiny CLIP pretrained on synthetic captions "
                         "(backbone.kind=clip only); for backbone.kind=vit_bert pass backbone.pretrained=null "
                         "(random init) or a local folder with vision/ (ViT) and text/ (BERT) Hugging Face "
                         "directories")
    common = dict(embed_dim=spec.embed_dim, num_cameras=num_cameras, sie_coef=sie_coef, preset=spec.name)

    if pretrained is None:
        tokenizer = default_wordpiece_tokenizer(spec.context_length, cache_dir=cache_dir)
        text = BertModel(spec.bert_config(spec.vocab_size or tokenizer.vocab_size, tokenizer.pad_token_id),
                         add_pooling_layer=False)
        return ReidViTBert(ViTModel(spec.vit_config(size), add_pooling_layer=False), text, tokenizer, **common)

    from transformers import BertConfig, ViTConfig

    directory = check_pretrained_dir(pretrained)
    vcfg = ViTConfig.from_pretrained(str(directory / "vision"), local_files_only=True)
    tcfg = BertConfig.from_pretrained(str(directory / "text"), local_files_only=True)
    for sub, cfg, expected in (("vision", vcfg, "vit"), ("text", tcfg, "bert")):
        if cfg.model_type != expected:
            raise ValueError(f"{directory / sub}/config.json is a {cfg.model_type!r} config, expected {expected!r}")
    _check_shapes(spec, vcfg, tcfg, directory)
    tokenizer = load_bert_tokenizer(directory / "text", min(spec.context_length, tcfg.max_position_embeddings))

    loaded = _load_tower(ViTModel, directory / "vision", "ViT")
    state = loaded.state_dict()
    key = "embeddings.position_embeddings"
    state[key] = interpolate_pos_embedding(state[key][0], _grid_of(loaded.config), grid)[None]
    del loaded
    vision = ViTModel(spec.vit_config(size), add_pooling_layer=False)
    vision.load_state_dict(state)
    text = _load_tower(BertModel, directory / "text", "BERT")
    mean, std = _pixel_statistics(directory / "vision")
    return ReidViTBert(vision, text, tokenizer, image_mean=mean, image_std=std, **common)


@register_backbone("vit_bert")
def _vit_bert_kind(preset: str, pretrained, image_size, num_cameras: int) -> ReidViTBert:
    return build_vit_bert(preset, pretrained=pretrained, image_size=image_size, num_cameras=num_cameras)


__all__ = [
    "PRESETS",
    "PretrainedViTBertNotFound",
    "ReidViTBert",
    "VIT_IMAGE_MEAN",
    "VIT_IMAGE_STD",
    "ViTBertPreset",
    "build_vit_bert",
    "check_pretrained_dir",
    "get_preset",
    "list_presets",
]
